"""``autoglm docs add|list|rm|sync|search`` and ``autoglm ask``: collections of the user's files,
searched by keywords and meaning, and answers that cite them (``engine/docs/``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autoglm.engine import sampling as limits
from autoglm.engine.cli_model import open_model, sampling, stream
from autoglm.engine.docs import ask as answers
from autoglm.engine.docs.index import DocIndex, check_name
from autoglm.engine.errors import InvalidArgumentError


def open_encoder(name: str | None) -> Any:
    """(manifest, encoder); None: the default. Imported here: `autoglm --help` loads no runtime."""
    from autoglm.engine.tasks.embed import open_encoder as opened

    return opened(name)


RERANK_HELP = "re-score the best 20 passages with this embedding model (as autoglm rerank does)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    docs = sub.add_parser("docs", help="collections of your documents: add, list, rm, sync, search")
    commands = docs.add_subparsers(dest="docs_command", required=True)
    p = commands.add_parser("add", help="index files and folders (text, Markdown, HTML, PDF, DOCX)")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--encoder", help="embedding model (default all-MiniLM-L6-v2; fixed per collection)")
    p.set_defaults(func=cmd_add)
    p = commands.add_parser("sync", help="re-index what changed on disk, drop what is gone")
    p.add_argument("collection")
    p.set_defaults(func=cmd_sync)
    p = commands.add_parser("list", help="collections with their folders, files and chunks")
    p.set_defaults(func=cmd_list)
    p = commands.add_parser("rm", help="remove a collection from the index (your files are not touched)")
    p.add_argument("collection")
    p.set_defaults(func=cmd_rm)
    p = commands.add_parser("search", help="the passages that best match a query")
    p.add_argument("query")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("-k", type=int, default=5, help="passages (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per passage")
    p.add_argument("--rerank", metavar="MODEL", help=RERANK_HELP)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ask", help="an answer from a collection's passages, with numbered citations")
    p.add_argument("question")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("-k", type=int, default=5, help="passages given to the model (default 5)")
    p.add_argument("--rerank", metavar="MODEL", help=RERANK_HELP)
    p.add_argument("--model", "-m", help="chat model (default: the task router's)")
    p.add_argument("--threads", "-t", type=int)
    p.add_argument("--ctx", type=int)
    p.add_argument("--gpu-layers", type=int)
    p.add_argument("--safe", action="store_true")
    p.add_argument("--draft")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=limits.DEFAULT_TOP_P)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-tokens", type=int, default=limits.DEFAULT_MAX_TOKENS)
    p.add_argument("--stop", action="append")
    p.set_defaults(func=cmd_ask)


def _say(path: str, what: str) -> None:
    print(f"{path}: {what}", file=sys.stderr, flush=True)


def _sync(name: str, roots: list[Path] | None, encoder: str | None) -> int:
    with DocIndex() as index:
        known = name in index.names()
        chosen = index.collection(name)[1] if known else encoder
        if known and encoder and encoder != chosen:
            raise InvalidArgumentError(f"collection {name!r} is indexed with {chosen}; it cannot switch to {encoder}")
        from autoglm.engine.docs.collection import sync

        manifest, enc = open_encoder(chosen)
        report = sync(index, name, manifest.name, enc, roots, _say)
    print(f"{name}: {len(report.indexed)} file(s) indexed ({report.chunks} chunks), {report.unchanged} unchanged, "
          f"{len(report.removed)} removed, {len(report.skipped)} skipped", file=sys.stderr)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from autoglm.engine.docs.collection import check_roots

    check_name(args.collection)
    check_roots(list(args.paths))
    return _sync(args.collection, list(args.paths), args.encoder)


def cmd_sync(args: argparse.Namespace) -> int:
    with DocIndex() as index:
        index.collection(args.collection)
    return _sync(args.collection, None, None)


def cmd_list(args: argparse.Namespace) -> int:
    with DocIndex() as index:
        rows = index.summary()
    if not rows:
        print("no collections yet: autoglm docs add PATH --collection NAME", file=sys.stderr)
    for row in rows:
        print(f"{row['name']}: {row['files']} files, {row['chunks']} chunks ({row['encoder']}); "
              f"{', '.join(map(str, row['roots']))}")  # type: ignore[call-overload]
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with DocIndex() as index:
        index.remove(args.collection)
    print(f"removed the collection {args.collection} (your files are untouched)", file=sys.stderr)
    return 0


def _hits(name: str, query: str, k: int, rerank: str | None) -> list[Any]:
    from autoglm.engine.docs.search import search_collection

    reranker = None
    if rerank is not None:
        from autoglm.engine.cli_tasks import _no_chat_model
        from autoglm.engine.hardware import probe
        from autoglm.engine.runtime import Runtime

        reranker = Runtime("chat", _no_chat_model, probe(), encoders_alone=True).reranker(rerank)
    return search_collection(name, query, k, lambda encoder: open_encoder(encoder)[1], rerank=reranker)


def cmd_search(args: argparse.Namespace) -> int:
    for n, hit in enumerate(_hits(args.collection, args.query, args.k, args.rerank), 1):
        if args.json:
            print(json.dumps(hit.json(), ensure_ascii=False))
        else:
            text = " ".join(hit.text.split())
            score = f"score {hit.score:.4f}" + ("" if hit.rerank_score is None else f", rerank {hit.rerank_score:.4f}")
            print(f"[{n}] {answers.source(hit)} ({score})\n    {text[:300]}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from autoglm.engine.tasks.chat import ChatSession

    if not args.question.strip():
        raise InvalidArgumentError("the question is empty")
    hits = answers.relevant(_hits(args.collection, args.question, args.k, args.rerank))
    if not hits:
        print(answers.NOT_FOUND)
        return 0
    params = sampling(args)
    with open_model(args) as (_, backend):
        messages = answers.messages(args.question, hits)
        session = ChatSession(backend, system=messages[0]["content"])
        stream(session.send(messages[1]["content"], params))
    print("\n".join(answers.citations(hits)))
    return 0
