"""The encoder commands: ``embed``, ``rerank``, ``classify`` (``train``, ``correct``) and ``models convert``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from autoglm.engine.errors import InvalidArgumentError


def _texts(args: argparse.Namespace) -> list[str]:
    if args.file:
        try:
            lines = Path(args.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}") from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise InvalidArgumentError(f"{args.file} has no texts (one per line)")
        return texts
    if not args.text:
        raise InvalidArgumentError("give a text, or --file with one text per line")
    return [args.text]


def _note_truncated(count: int, total: int, max_length: int) -> None:
    if count:
        print(f"note: {count} of {total} text(s) were longer than {max_length} tokens and were truncated",
              file=sys.stderr)


def cmd_embed(args: argparse.Namespace) -> int:
    from autoglm.engine.hardware import probe
    from autoglm.engine.runtime import Runtime

    texts = _texts(args)
    done = Runtime("chat", _no_chat_model, probe(), encoders_alone=True).embed(texts, args.model, args.precision)
    _note_truncated(done.truncated, len(texts), done.max_length)
    for text, vec in zip(texts, done.vectors, strict=True):
        print(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in vec]}))
    return 0


def cmd_rerank(args: argparse.Namespace) -> int:
    from autoglm.engine.hardware import probe
    from autoglm.engine.runtime import Runtime

    args.text = None
    documents = _texts(args)
    done = Runtime("chat", _no_chat_model, probe(), encoders_alone=True).rerank(args.query, documents, args.model,
                                                                              args.top)
    _note_truncated(done.truncated, len(documents) + 1, done.max_length)
    for r in done.results:
        print(json.dumps({"index": r.index, "score": round(r.score, 4), "text": r.text}) if args.json
              else f"{r.score:6.3f}  {r.text}")
    print(f"scored by {done.model} ({done.method})", file=sys.stderr)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from autoglm.engine.cli_extract import load_chat
    from autoglm.engine.hardware import probe
    from autoglm.engine.runtime import Runtime
    from autoglm.engine.tasks.classify import parse_labels
    from autoglm.engine.tasks.prompt_tune import is_prompt

    texts = _texts(args)
    if args.prompt and not is_prompt(args.prompt):
        raise InvalidArgumentError(f"{args.prompt} is not a tuned prompt (`autoglm prompt tune` makes one)")
    # the chat model loads only if a tuned prompt labels (the classify route may name one)
    runtime = Runtime("chat", lambda: load_chat(args, "chat", single=len(texts) == 1)[1], probe(),
                      encoders_alone=True)
    try:
        started = time.perf_counter()
        done = runtime.classify(texts, model=args.prompt or args.model, exact=args.exact, encoder=args.encoder,
                                labels=parse_labels(args.labels) if args.labels and not args.prompt else None,
                                precision=args.precision)
        elapsed = time.perf_counter() - started
    finally:
        runtime.close()
    if done.max_length:
        _note_truncated(done.truncated, len(texts), done.max_length)
    for p in done.predictions:
        print(_classified(p, done.layers, args.json))
    if len(texts) > 1:
        how = f" with prompt {args.prompt or args.model}" if done.layers is None else ""
        print(f"{len(texts)} texts in {elapsed:.2f}s ({len(texts) / elapsed:.1f}/s){how}", file=sys.stderr)
    return 0


def _no_chat_model() -> Any:
    raise AssertionError("an encoder command (embed, classify train) never loads the chat model")


def _classified(p: Any, layers: int | None, as_json: bool) -> str:
    """One output line; a tuned prompt's labels carry no confidence (the chat model answers)."""
    if layers is None:
        return json.dumps({"text": p.text, "label": p.label}) if as_json else f"{p.label}\t{p.text[:70]}"
    if as_json:
        return json.dumps({"text": p.text, "label": p.label, "confidence": round(p.confidence, 4),
                           "exit_layer": p.exit_layer, "review": p.review})
    flag = "\treview" if p.review else ""
    return f"{p.label}\t{p.confidence:.3f}\tlayer {p.exit_layer}/{layers}{flag}\t{p.text[:70]}"


def cmd_classify_train(args: argparse.Namespace) -> int:
    from autoglm.engine.hardware import probe
    from autoglm.engine.runtime import Runtime
    from autoglm.engine.tasks.classify import load_examples, parse_labels

    if bool(args.examples) == bool(args.labels):
        raise InvalidArgumentError("give --examples FILE (text,label rows) or --labels a,b,c (zero-shot), not both")
    examples = load_examples(args.examples) if args.examples else None
    texts = examples[0] if examples else []
    runtime = Runtime("chat", _no_chat_model, probe(), encoders_alone=True)
    done = runtime.train_classifier(args.name, examples, labels=parse_labels(args.labels) if args.labels else None,
                                    encoder=args.encoder, precision=args.precision, budget=args.budget)
    clf, manifest, encoder_length = done.classifier, done.manifest, done.max_length
    if args.examples:
        report = clf.report
        _note_truncated(report["truncated"], len(texts), encoder_length)
        rule = report["chosen"]
        full = report["rules"].get("full", {})
        exit_info = report["rules"].get(rule["kind"], {})
        print(f"trained {manifest.name} on {len(texts)} examples, {len(clf.labels)} labels, in "
              f"{report['train_seconds']:.1f}s; held-out accuracy {full.get('accuracy', 0):.1f}% exact, "
              f"{exit_info.get('accuracy', full.get('accuracy', 0)):.1f}% with {rule['kind']} exit "
              f"(threshold {rule['threshold']}, mean exit layer {exit_info.get('mean_exit', len(clf.heads)):.2f}"
              f"/{len(clf.heads)}), token pruning {clf.prune_alpha or 'off'}")
    else:
        print(f"saved zero-shot classifier {manifest.name} ({', '.join(clf.labels)})")
    return 0


def cmd_classify_correct(args: argparse.Namespace) -> int:
    from autoglm.engine.router import route
    from autoglm.engine.tasks.classify import load_examples
    from autoglm.engine.tasks.corrections import correct

    name = route("classify", args.model)
    if not name:
        raise InvalidArgumentError("give --model NAME (the classifier to correct), or route classify to one")
    if bool(args.file) == bool(args.text and args.label):
        raise InvalidArgumentError("give TEXT --label RIGHT_LABEL, or --file with text,label rows")
    pairs = list(zip(*load_examples(args.file, min_labels=1), strict=True)) if args.file else [(args.text, args.label)]
    started = time.perf_counter()
    manifest = correct(name, pairs)
    clf_report = json.loads((manifest.directory / "classifier.json").read_text())["report"]
    print(f"retrained {manifest.name} as version {manifest.version} in {time.perf_counter() - started:.1f}s with "
          f"{len(pairs)} new correction(s), {clf_report.get('corrections', 0)} in all "
          f"(`autoglm models rollback {manifest.name}` undoes it)")
    return 0


def cmd_models_convert(args: argparse.Namespace) -> int:
    from autoglm.engine.backends.onnx.convert import convert
    from autoglm.engine.cli_progress import progress_bar

    manifest = convert(args.name, progress=progress_bar(" stages"))
    print(f"installed {manifest.name} {manifest.version} (ONNX encoder, fp32 + int8, {manifest.size / 1e6:.0f} MB)")
    return 0


def add_parsers(sub: argparse._SubParsersAction, models: argparse._SubParsersAction) -> None:
    from autoglm.engine.cli_prompt import add_chat_options

    p = sub.add_parser("embed", help="sentence embeddings as JSON lines")
    p.add_argument("text", nargs="?")
    p.add_argument("--file", help="one text per line")
    p.add_argument("--model", "-m", help="converted encoder (default: all-MiniLM-L6-v2)")
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", help="documents (one per line of --file) by relevance to a query")
    p.add_argument("query")
    p.add_argument("--file", required=True, help="one document per line")
    p.add_argument("--model", "-m", help="converted encoder (default: all-MiniLM-L6-v2)")
    p.add_argument("--top", type=int, help="keep the N most relevant")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("classify", help="label texts (also: `classify train`, `classify correct`)")
    p.add_argument("text", nargs="?")
    p.add_argument("--file", help="one text per line")
    p.add_argument("--model", "-m", help="a trained or saved classifier")
    p.add_argument("--labels", help="zero-shot: a,b,c or a=description,b=description")
    p.add_argument("--encoder", help="encoder for --labels (default: all-MiniLM-L6-v2)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--exact", action="store_true", help="full model: no early exit, no token pruning")
    p.add_argument("--precision", choices=["int8", "fp32"], help="encoder precision (default: the classifier's)")
    p.add_argument("--prompt", help="a tuned classify prompt (`autoglm prompt tune`): the chat model labels")
    add_chat_options(p, model_flag="--chat-model")
    p.set_defaults(func=cmd_classify)

    # reached as `classify train` / `classify correct` (main() rewrites them); no help: not listed twice
    p = sub.add_parser("classify-train", prog="autoglm classify train")
    p.add_argument("--examples", help="CSV (text,label header) or JSONL")
    p.add_argument("--labels", help="zero-shot classifier from label names instead")
    p.add_argument("--encoder", help="converted encoder (default: all-MiniLM-L6-v2)")
    p.add_argument("--name", required=True)
    p.add_argument("--budget", type=float, default=1.0, help="accuracy points early exit may cost (default 1)")
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    p.set_defaults(func=cmd_classify_train)

    p = sub.add_parser("classify-correct", prog="autoglm classify correct")
    p.add_argument("text", nargs="?")
    p.add_argument("--label", help="the right label for TEXT")
    p.add_argument("--file", help="corrections as text,label rows (CSV with a header, or JSONL)")
    p.add_argument("--model", "-m", help="the classifier (default: the router's)")
    p.set_defaults(func=cmd_classify_correct)

    p = models.add_parser("convert", help="Hugging Face BERT folder -> ONNX encoder (fp32 + int8)")
    p.add_argument("name")
    p.set_defaults(func=cmd_models_convert)
