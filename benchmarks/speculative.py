"""Speculative decoding against plain decoding and llama.cpp's llama-server, side by side in one run.

Single stream, temperature 0 (``--temperature T``: sampled), one workload at a time: copy-heavy
ones (repeat a text, fix its spelling, extract fields from a document, edit code) where drafts
from the context pay, and
free-form chat where they must not cost. Each row is the median of ``--rounds`` requests per
server (the servers take turns); tokens/s is completion tokens over the request's wall time.
Then the same with 8 concurrent streams (copy and chat mixed), where speculation must not lose.

    LLAMA_SERVER=/tmp/llama-tools/llama-server python -m benchmarks.speculative [--model NAME]
    ... --ladder --llama-spec ngram-simple,ngram-map-k,ngram-mod   # 135M, 0.5B and 1.5B, one table each
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import openai

from autoglm.engine import loader
from benchmarks.serve import llama_server, ours

DOC = ("Invoice 2024-117 from Northwind Traders, 12 Harbour Road, Leith, dated 3 March 2024: 40 crates of oranges "
       "at 12.50 each, 15 crates of lemons at 9.80 each, 6 boxes of limes at 7.25 each; delivery by van to the "
       "Canal Street depot before 9am; payment due within 30 days to account GB29 NWBK 6016 1331 9268 19, "
       "quoting the invoice number. Questions to accounts@northwind.example or 0131 496 0000.")
CODE = ("def total(items):\n    result = 0\n    for item in items:\n        if item.price > 0:\n"
        "            result = result + item.price * item.quantity\n    return result\n")
TYPOS = DOC.replace("crates", "crtaes").replace("payment", "paymnet").replace("delivery", "delivry")
WORKLOADS = {
    "copy: repeat a text": f"Repeat the following text exactly, word for word:\n\n{DOC}",
    "copy: fix spelling": "Fix the spelling mistakes and return the corrected text:\n\n" + TYPOS,
    "copy: extract fields": f"From this document, write each field on its own line as 'field: value' "
                            f"(invoice number, seller, address, date, each item with its price):\n\n{DOC}",
    "copy: edit code": f"Rename the variable `result` to `subtotal` in this function and return the whole "
                       f"function:\n\n{CODE}",
    "chat: free-form": "Write a short story about a lighthouse keeper and a storm.",
    "chat: explain": "Explain how a bicycle gear system works.",
}


def stdlib_functions(count: int = 4, lines: tuple[int, int] = (10, 80)) -> list[str]:
    """Functions of Python's own standard library, 10-80 lines each (what users paste to an editor's
    assistant), chosen by a fixed walk so every run edits the same ones."""
    import inspect
    import json.decoder
    import shlex
    import string
    import textwrap

    found = []
    for module in (textwrap, shlex, string, json.decoder):
        for _, obj in sorted(inspect.getmembers(module)):
            for fn in ([obj] if inspect.isfunction(obj) else
                       [f for _, f in sorted(inspect.getmembers(obj, inspect.isfunction))] if inspect.isclass(obj)
                       else []):
                try:
                    src = textwrap.dedent(inspect.getsource(fn))
                except (OSError, TypeError):
                    continue
                if lines[0] <= src.count("\n") <= lines[1] and src not in found:
                    found.append(src)
    return found[:count]


for _i, _src in enumerate(stdlib_functions()):
    WORKLOADS[f"code edit {_i + 1} ({_src.count(chr(10))} lines)"] = (
        "Add one comment line at the top of this function's body saying what it does, and return the whole "
        f"function unchanged otherwise:\n\n```python\n{_src}```")


TEMPERATURE = [0.0]  # --temperature; > 0: sampled streams, verified by the rejection rule
LADDER = ["smollm2", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]  # 135M, 0.5B, 1.5B


def one(url: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    seconds, tokens, _text = said(url, prompt, max_tokens)
    return seconds, tokens


def said(url: str, prompt: str, max_tokens: int) -> tuple[float, int, str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    started = time.perf_counter()
    r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                       temperature=TEMPERATURE[0], max_tokens=max_tokens)
    return time.perf_counter() - started, r.usage.completion_tokens, r.choices[0].message.content or ""


def drafts(url: str) -> tuple[float, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("autoglm_draft_tokens ", "autoglm_draft_accepted "))}
    return values.get("autoglm_draft_tokens", 0.0), values.get("autoglm_draft_accepted", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--ladder", action="store_true",
                        help=f"the sizes users run, one after another: {', '.join(LADDER)} (pulled if missing)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above: sampled")
    parser.add_argument("--draft", help="also a server with this draft model (same vocabulary as --model)")
    parser.add_argument("--llama-spec", default="",
                        help="also llama-server with each of these --spec-type values, e.g. "
                             "ngram-simple,ngram-map-k,ngram-mod (draft-simple uses --draft's file)")
    parser.add_argument("--workloads", default="", help="only workloads whose name contains one of these")
    parser.add_argument("--no-batch", action="store_true", help="skip the 8-stream round")
    parser.add_argument("--tuned", action="store_true",
                        help="also our server on the model by name, as `autoglm tune [--quants]` left it (n-gram on)")
    args = parser.parse_args()
    TEMPERATURE[0] = args.temperature
    for model in (LADDER if args.ladder else [args.model]):
        compare(model, args)
        print(flush=True)


def compare(model: str | None, args: argparse.Namespace) -> None:
    """One model's table: our servers and llama-server's, side by side."""
    plan = loader.prepare(model, measured=False).plan  # the file as installed: what llama-server gets too
    kw = {"parallel": 8, "threads": args.threads, "ctx": 2048}
    binary = os.environ.get("LLAMA_SERVER")
    print(f"model {os.path.basename(plan.model_path)}, {args.threads} threads, GPU layers {plan.gpu_layers}, "
          f"temperature {args.temperature:g}, max_tokens {args.max_tokens}, median of {args.rounds}")
    with ExitStack() as stack:
        plain_url = stack.enter_context(ours(plan, extra=["--no-speculate"], **kw))
        spec_url = stack.enter_context(ours(plan, **kw))
        servers = {"plain": plain_url, "n-gram": spec_url}
        if args.draft:
            servers["draft"] = stack.enter_context(ours(plan, extra=["--draft", args.draft], **kw))
        if args.tuned:
            prepared = loader.prepare(model)
            name = prepared.model.manifest.name if prepared.model.manifest else None
            if name is None:
                raise SystemExit("--tuned needs an installed model")
            print(f"tuned: {prepared.model.label}; {prepared.plan.reasons.get('model', 'no measured version')}; "
                  f"split prompt {prepared.plan.reasons.get('split_prompt')}")
            servers["tuned"] = stack.enter_context(ours(plan, model=name, **kw))
            servers["tuned plain"] = stack.enter_context(ours(plan, model=name, extra=["--no-speculate"], **kw))
        if binary:
            servers["llama-server"] = stack.enter_context(llama_server(binary, plan, **kw))
            for spec in filter(None, args.llama_spec.split(",")):
                extra = ["--spec-type", spec]
                if spec == "draft-simple":
                    if not args.draft:
                        raise SystemExit("draft-simple needs --draft MODEL")
                    extra = ["-md", str(loader.prepare(args.draft, measured=False).plan.model_path)]
                servers[f"ls {spec}"] = stack.enter_context(llama_server(binary, plan, extra=extra, **kw))
        for url in servers.values():
            one(url, "Say hi.", 8)  # warm-up
        names = list(servers)
        print(f"{'workload':<24}" + "".join(f"{n + ' tok/s':>20}" for n in names) + f"{'accepted':>10}"
              + f"{'same text':>10}"
              + f"{'n-gram/plain':>14}" + (f"{'draft/plain':>14}" if args.draft else "")
              + (f"{'n-gram/llama-server':>21}" if binary else "")
              + (f"{'tuned/llama-server':>21}" if binary and args.tuned else ""))
        chosen = {w: p for w, p in WORKLOADS.items()
                  if not args.workloads or any(k in w for k in args.workloads.split(","))}
        for workload, prompt in chosen.items():
            rates: dict[str, list[float]] = {n: [] for n in names}
            texts: dict[str, list[str]] = {n: [] for n in names}
            before = drafts(spec_url)
            for round_ in range(args.rounds):
                for name in (names if round_ % 2 == 0 else names[::-1]):
                    seconds, tokens, text = said(servers[name], prompt, args.max_tokens)
                    rates[name].append(tokens / seconds)
                    texts[name].append(text)
            after = drafts(spec_url)
            accepted = (after[1] - before[1]) / max(after[0] - before[0], 1)
            med = {n: statistics.median(v) for n, v in rates.items()}
            # greedy text can differ where a multi-row step rounds a close call the other way (docs/serving.md);
            # a shorter or longer reply then changes tokens/s too, so the rows say how often it happened
            same = sum(a == b for a, b in zip(texts["n-gram"], texts["plain"], strict=True)) / args.rounds
            row = f"{workload:<24}" + "".join(f"{med[n]:>20.1f}" for n in names) + f"{accepted:>10.0%}"
            row += f"{same:>10.0%}"
            row += f"{med['n-gram'] / med['plain']:>13.2f}x"
            best_peer = max((n for n in names if n.startswith("ls ")), key=lambda n: med[n], default=None)
            if args.draft:
                row += f"{med['draft'] / med['plain']:>13.2f}x"
            if binary:
                row += f"{med['n-gram'] / med['llama-server']:>20.2f}x"
            if binary and args.tuned:
                row += f"{med['tuned'] / med['llama-server']:>20.2f}x"
            if best_peer:
                # the first round alone: a request neither side has seen (both keep n-grams of earlier replies)
                first_peer = max((n for n in names if n.startswith("ls ")), key=lambda n: rates[n][0])
                for ours_ in ("n-gram", "tuned") if args.tuned else ("n-gram",):
                    row += (f"  {ours_}/best peer ({best_peer}) {med[ours_] / med[best_peer]:.2f}x, first round "
                            f"{rates[ours_][0] / rates[first_peer][0]:.2f}x ({first_peer})")
            if args.tuned:
                kept = sum(a == b for a, b in zip(texts["tuned"], texts["tuned plain"], strict=True))
                row += f", tuned text as tuned plain {kept} of {args.rounds}"
            print(row, flush=True)
        if args.no_batch:
            return
        prompts = list(WORKLOADS.values()) + list(WORKLOADS.values())[:2]
        print(f"\n8 concurrent streams (all the workloads at once), aggregate tok/s, median of {args.rounds}:")
        together: dict[str, list[float]] = {n: [] for n in names}
        for round_ in range(args.rounds):  # the servers take turns, as above
            for name in (names if round_ % 2 == 0 else names[::-1]):
                started = time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    done = list(pool.map(lambda p, u=servers[name]: one(u, p, args.max_tokens), prompts))
                together[name].append(sum(t for _, t in done) / (time.perf_counter() - started))
        med = {n: statistics.median(v) for n, v in together.items()}
        for name in names:
            print(f"  {name:<14}{med[name]:>10.1f}  ({med[name] / med['plain']:.2f}x plain"
                  + (f", {med[name] / med['llama-server']:.2f}x llama-server)" if binary else ")"), flush=True)


if __name__ == "__main__":
    main()
