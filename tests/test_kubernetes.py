"""packaging/kubernetes, validated offline: each overlay built by ``kubectl kustomize``, every object
Kubernetes has a schema for checked by kubernetes-validate (strict: an unknown field is an error),
and the manifests checked against the engine they run: its command lines parse with the CLI's own
parser, the probes hit the health routes that need no key, KEDA's queries name metrics the engine
exports, its target per replica is the replica's slots, and the pod's grace covers the drain."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent / "packaging" / "kubernetes"
OVERLAYS = ["cpu", "nvidia"]
NO_SCHEMA = {"ScaledObject", "ServiceMonitor"}  # KEDA's and the Prometheus Operator's CRDs
K8S_VERSION = "1.32.0"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its kustomize) is not installed")


def _build(overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay):
    import kubernetes_validate

    objects = _build(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} | NO_SCHEMA <= kinds
    for obj in objects:
        if obj["kind"] in NO_SCHEMA:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises on any mistake


def test_strict_validation_catches_a_misspelt_field():
    import kubernetes_validate

    deployment = _one(_build("cpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of a container's command and args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def _env(container: dict, config: dict[str, str]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "configMapKeyRef" in source:
            env[item["name"]] = config[source["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in source:
            env[item["name"]] = "secret"
        else:
            env[item["name"]] = item["value"]
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_fit_the_engine_they_run(overlay):
    from autoglm.engine.cli import build_parser
    from autoglm.engine.server.guard import OPEN_PATHS
    from autoglm.engine.server.metrics import Metrics

    objects = _build(overlay)
    config = _one(objects, "ConfigMap")["data"]
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    parser = build_parser()

    pull = pod["initContainers"][0]
    argv = _expand(pull["command"], _env(pull, config))
    assert argv[:3] == ["autoglm", "models", "pull"] and argv[3] == config["model"]
    parser.parse_args(argv[1:])

    engine = pod["containers"][0]
    env = _env(engine, config)
    argv = _expand(engine["command"] + engine["args"], env)
    args = parser.parse_args(argv[1:])  # a flag the CLI does not know exits here
    assert args.model == config["model"] and args.parallel == int(config["slots"])
    assert args.host == "0.0.0.0" and env["AUTOGLM_API_KEY"] == "secret"  # off loopback: a key is required
    assert args.no_manage  # a fleet's replicas never pull or delete on request
    assert pod["terminationGracePeriodSeconds"] > args.grace  # the drain finishes before SIGKILL
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # probes carry no key
        assert engine[probe]["httpGet"]["path"] in OPEN_PATHS
    assert engine["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert engine["livenessProbe"]["httpGet"]["path"] == "/health/live"  # 200 while draining
    mounts = {m["mountPath"] for m in engine["volumeMounts"]}
    assert env["AUTOGLM_HOME"] in mounts and "/tmp" in mounts  # writable, the root file system is not

    class _Scheduler:
        queue_depth = active = parallel = 0
        stats = {"tokens_generated": 0}

    exported = {m.name for m in Metrics(_Scheduler()).registry.collect()}
    scaled = _one(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == _one(objects, "Deployment")["metadata"]["name"]
    for trigger in scaled["triggers"]:
        named = set(re.findall(r"autoglm_\w+", trigger["metadata"]["query"]))
        assert named and named <= exported, named - exported
    active = next(t for t in scaled["triggers"] if "autoglm_active_sequences" in t["metadata"]["query"])
    assert active["metadata"]["threshold"] == config["slots"]  # replicas = sequences / slots per replica

    monitor = _one(objects, "ServiceMonitor")["spec"]
    service = _one(objects, "Service")
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    budget = _one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert budget.items() <= _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    if overlay == "nvidia":
        assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1 and args.gpu_layers == -1
