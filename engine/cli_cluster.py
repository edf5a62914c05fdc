"""``autoglm cluster serve``: the engine as autoscaled Ray Serve replicas behind one endpoint
(``engine/cluster/``). Flags as ``autoglm serve`` has them, plus the replica range."""

from __future__ import annotations

import argparse

from autoglm.engine.errors import InvalidArgumentError


def add_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="serve on a Ray cluster: replicas, autoscaling, prefix routing")
    commands = cluster.add_subparsers(dest="cluster_command", required=True)
    p = commands.add_parser("serve", help="one OpenAI-compatible endpoint over autoscaled engine replicas")
    p.add_argument("--model", "-m", help="model name or source (default: SmolLM2)")
    p.add_argument("--host", default="127.0.0.1", help="the endpoint's address (others need an API key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set AUTOGLM_API_KEY)")
    p.add_argument("--slots", type=int, default=4,
                   help="sequences each replica decodes together; the autoscaler's target per replica (default 4)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (and Ray CPUs) per replica (default 1)")
    p.add_argument("--ctx", type=int, default=2048, help="context per sequence in tokens (default 2048)")
    p.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU, -1 for all (default: planned)")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--upscale-delay", type=float, default=10.0, help="seconds of load before adding a replica")
    p.add_argument("--downscale-delay", type=float, default=120.0, help="seconds of quiet before removing one")
    p.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    p.set_defaults(func=cmd_cluster_serve)


def cmd_cluster_serve(args: argparse.Namespace) -> int:
    from autoglm.engine.server.serve import ServeSettings  # here: `autoglm --help` must not load the server

    try:
        from autoglm.engine.cluster.app import ClusterSettings, run
    except ImportError as exc:  # no Ray, or a bundle (they leave the cluster out)
        if not (exc.name or "").startswith(("ray", "autoglm.engine.cluster")):
            raise
        raise InvalidArgumentError("autoglm cluster needs Ray Serve: from a Python install, "
                                   "pip install 'open-autoglm[cluster]'") from None
    if not 1 <= args.slots <= 64:  # (ServeSettings would name its own flag, --parallel)
        raise InvalidArgumentError(f"--slots must be 1-64, got {args.slots}")
    engine = ServeSettings.load(None, {"model": args.model, "host": args.host, "port": args.port,
                                       "api_key": args.api_key, "parallel": args.slots, "threads": args.threads,
                                       "ctx": args.ctx, "gpu_layers": args.gpu_layers, "no_manage": True})
    return run(ClusterSettings(engine, args.min_replicas, args.max_replicas, args.address, args.upscale_delay,
                               args.downscale_delay))
