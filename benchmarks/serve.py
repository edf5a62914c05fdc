"""Our server against llama.cpp's own llama-server, side by side in one run.

Both serve the same GGUF with the same threads and parallel slots. For 1, 4, 8 and 16 concurrent
streams (each a streamed chat request at temperature 0, distinct prompts), it prints aggregate
generated tokens/s and time to first token p50/p99. Then prefix reuse: with a ~1,500-token chat
history, the next turn's TTFT on a warm server (which just served the history) against the same
request on a freshly started one.

    LLAMA_SERVER=/tmp/llama-tools/llama-server python -m benchmarks.serve [--parallel 8] [--threads 2]

llama-server comes from ../shared/tools/build-llama-tools (the llama.cpp sources vendored in the
llama-cpp-python sdist we pin). Without LLAMA_SERVER only our rows are printed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import openai

from autoglm.engine import loader

TOPICS = ["rivers", "volcanoes", "bees", "trains", "chess", "bread", "comets", "owls", "glass", "tides",
          "maps", "salt", "violins", "deserts", "kites", "coral"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.args}")
        try:
            client.models.list()
            return
        except Exception:
            time.sleep(0.3)
    raise SystemExit("server did not come up")


@contextmanager
def _running(argv: list[str], port: int):
    # no tuning in the background: an idle server of the comparison would measure while another is timed
    env = {**os.environ, "AUTOGLM_AUTOTUNE": "0"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def ours(plan, parallel: int, threads: int, ctx: int, extra: list[str] | None = None, model: str | None = None):
    """Our server on the plan's file, or on ``model`` by name (then what `autoglm tune` measured applies:
    its settings and the version its quality gate chose)."""
    port = _free_port()
    return _running([sys.executable, "-m", "autoglm", "serve", "--port", str(port), "--parallel", str(parallel),
                     "--threads", str(threads), "--ctx", str(ctx), "--model", model or plan.model_path,
                     *(extra or [])], port)


def llama_server(binary: str, plan, parallel: int, threads: int, ctx: int, extra: list[str] | None = None):
    """llama.cpp's server with what our planner chose for the same model: GPU layers, flash attention,
    and the repacked (extra-buffer) path only where our self-test let the engine use it (on one Xeon
    class here it segfaults); ``extra``: more flags (a speculation type, a draft model)."""
    port = _free_port()
    return _running([binary, "-m", plan.model_path, "--port", str(port), "-np", str(parallel), "-t", str(threads),
                     "-tb", str(threads), "-c", str(parallel * ctx), "--no-webui", "-ngl", str(plan.gpu_layers),
                     "-fa", "on" if plan.flash_attn else "off", *([] if plan.use_extra_bufts else ["--no-repack"]),
                     *(extra or [])], port)


def _stream(client: openai.OpenAI, messages: list[dict], max_tokens: int) -> tuple[float, int, float]:
    """(time to first token, completion tokens, total seconds) for one streamed request."""
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(model="default", messages=messages, temperature=0, max_tokens=max_tokens,
                                            stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            tokens += 1  # one content chunk per token on both servers
    return (first or time.perf_counter()) - started, tokens, time.perf_counter() - started


def concurrency(url: str, streams: int, max_tokens: int) -> dict[str, float]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    prompts = [[{"role": "user", "content": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}."}]
               for i in range(streams)]
    _stream(client, prompts[0], 8)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda m: _stream(client, m, max_tokens), prompts))
    wall = time.perf_counter() - started
    ttft = sorted(r[0] * 1000 for r in results)
    return {"tps": sum(r[1] for r in results) / wall, "p50": statistics.median(ttft),
            "p99": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))]}


def _history(turns: int = 24) -> list[dict]:
    msgs = [{"role": "system", "content": "You are a patient tutor who answers in detail."}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}, part {i}."})
        msgs.append({"role": "assistant", "content": f"Here is what I know about {TOPICS[i % len(TOPICS)]}: "
                     + "they are interesting in many ways, with a long history and many details worth noting. " * 3})
    return msgs


def prefix_reuse(server_ctx, **kw) -> tuple[float, float, int]:
    history = _history()
    next_turn = [*history, {"role": "user", "content": "Summarize all of that in one sentence."}]
    with server_ctx(**kw) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
        reply = client.chat.completions.create(model="default", messages=next_turn, max_tokens=1)
        prompt_tokens = reply.usage.prompt_tokens
    with server_ctx(**kw) as url:  # cold: a fresh server sees the whole conversation for the first time
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
        cold = _stream(client, next_turn, 8)[0]
    with server_ctx(**kw) as url:  # warm: it has just served the history
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
        _stream(client, [*history[:-1]], 8)
        warm = _stream(client, next_turn, 8)[0]
    return cold, warm, prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=2048, help="tokens per slot")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--streams", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each row this many times, alternating which server goes first, and print "
                             "the median ratio (this machine is noisy: one pair of runs varies by +-15%%)")
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix-reuse measurement")
    parser.add_argument("--tuned", action="store_true",
                        help="also our server on the model by name: what `autoglm tune` measured applies")
    args = parser.parse_args()
    plan = loader.prepare(args.model, measured=False).plan  # the file as installed: what llama-server gets too
    servers = [("ours", lambda **kw: ours(plan, **kw))]
    if args.tuned:
        if not args.model:
            raise SystemExit("--tuned needs --model NAME")
        servers.append(("ours tuned", lambda **kw: ours(plan, model=args.model, **kw)))
    binary = os.environ.get("LLAMA_SERVER")
    if binary:
        servers.append(("llama-server", lambda **kw: llama_server(binary, plan, **kw)))
    kw = {"parallel": args.parallel, "threads": args.threads, "ctx": args.ctx}
    print(f"model {os.path.basename(plan.model_path)}, {args.threads} threads, {args.parallel} slots, "
          f"GPU layers {plan.gpu_layers}, flash attention {'on' if plan.flash_attn else 'off'}, "
          f"max_tokens {args.max_tokens}, temperature 0")
    print(f"{'streams':>7}  " + "".join(f"{name + ' tok/s':>18}{'TTFT p50/p99 ms':>18}" for name, _ in servers)
          + "".join(f"{name + '/llama-server':>22}" for name, _ in servers[:-1] if binary))
    for streams in (int(s) for s in args.streams.split(",")):
        ratios: dict[str, list[float]] = {name: [] for name, _ in servers[:-1]} if binary else {}
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            measured = {}
            for name, ctx in order:
                with ctx(**kw) as url:
                    measured[name] = concurrency(url, streams, args.max_tokens)
            row = [measured[name] for name, _ in servers]
            cells = "".join(f"{r['tps']:>18.1f}{r['p50']:>10.0f}/{r['p99']:<7.0f}" for r in row)
            for name in ratios:
                ratios[name].append(measured[name]["tps"] / measured["llama-server"]["tps"])
            print(f"{streams:>7}  {cells}" + "".join(f"{r[-1]:>21.2f}x" for r in ratios.values()), flush=True)
        for name, r in ratios.items():
            if len(r) > 1:
                print(f"{streams:>7}  median {name}/llama-server over {len(r)} paired runs: "
                      f"{statistics.median(r):.2f}x (range {min(r):.2f}-{max(r):.2f})", flush=True)
    if args.no_prefix:
        return
    print("\nprefix reuse (next turn after a long history), TTFT:")
    for name, ctx in servers:
        cold, warm, n = prefix_reuse(ctx, **kw)
        print(f"  {name:<14}{n} prompt tokens: cold {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms, "
              f"warm/cold {warm / cold:.2f}x")


if __name__ == "__main__":
    main()
