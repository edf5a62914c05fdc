"""What this device is: probed once per process, kept as plain data the planner can reason about.

Parsing is split from probing so recorded ``/proc/cpuinfo`` samples and device profiles of
machines we do not have (ARM boards, GPU desktops, old CPUs) test the same code paths.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Normalised names of the CPU features that change which llama.cpp / onnxruntime kernels run.
X86_FLAGS = {
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}
ARM_FLAGS = {"asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2"}

# ARM "CPU part" ids of efficiency cores: threads placed on them slow a whole decode step down.
ARM_LITTLE_PARTS = {"0xd03", "0xd05", "0xd46", "0xd80"}  # Cortex-A53, A55, A510, A520
ARM_PART_NAMES = {
    "0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4b": "Cortex-A78C", "0xd4d": "Cortex-A715",
    "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
    "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
}


@dataclass
class GPU:
    name: str
    vendor: str
    memory_total: int  # bytes
    memory_free: int  # bytes


@dataclass
class CPUInfo:
    model: str
    flags: list[str]
    logical_cores: int
    physical_cores: int
    big_cores: int  # cores worth a decode thread (all of them except on big.LITTLE ARM)


@dataclass
class DeviceFacts:
    """Everything the planner may look at; JSON-serialisable so profiles can be recorded."""

    os: str
    arch: str
    cpu: CPUInfo
    ram_total: int
    ram_available: int
    gpus: list[GPU] = field(default_factory=list)
    llama_cpp_version: str | None = None
    llama_gpu_offload: bool = False
    llama_cpu_variants: list[str] = field(default_factory=list)  # a portable build's CPU kernels
    llama_cpu_variant: str | None = None  # the one ggml loaded for this CPU
    onnx_providers: list[str] = field(default_factory=list)

    @property
    def is_arm(self) -> bool:
        return self.arch in ("aarch64", "arm64", "armv7l")

    def has(self, flag: str) -> bool:
        return flag in self.cpu.flags

    def fingerprint(self, gpus: bool = True) -> str:
        """What a cached measurement or verdict was made on: CPU model and flags, GPUs (when they
        matter to it) and the llama.cpp build. Another of any of these measures again."""
        flags = hashlib.sha256(" ".join(self.cpu.flags).encode()).hexdigest()[:12]
        names = ",".join(g.name for g in self.gpus) if gpus else ""
        return f"{self.cpu.model}|{flags}|{names}|llama_cpp {self.llama_cpp_version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceFacts:
        data = dict(data)
        data["cpu"] = CPUInfo(**data["cpu"])
        data["gpus"] = [GPU(**g) for g in data.get("gpus", [])]
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> DeviceFacts:
        return cls.from_dict(json.loads(Path(path).read_text()))


def parse_cpuinfo(text: str, arch: str) -> CPUInfo:
    """Read model, feature flags and core topology out of Linux's ``/proc/cpuinfo``."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    procs: list[dict[str, str]] = []
    header: dict[str, str] = {}
    for block in blocks:
        entry: dict[str, str] = {}
        for line in block.splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                entry[key.strip().lower()] = value.strip()
        if "processor" in entry:
            procs.append(entry)
        else:
            header.update(entry)
    logical = max(len(procs), 1)
    first = procs[0] if procs else header
    arm = arch in ("aarch64", "arm64", "armv7l")
    raw_flags = (first.get("features") if arm else first.get("flags")) or ""
    table = ARM_FLAGS if arm else X86_FLAGS
    flags = sorted({table[f] for f in raw_flags.split() if f in table})
    if arm:
        parts = [p.get("cpu part", "").lower() for p in procs]
        names = sorted({ARM_PART_NAMES.get(p, p) for p in parts if p})
        board = header.get("model") or first.get("model") or header.get("hardware", "")
        model = ", ".join(names) + (f" ({board})" if board else "")
        if not parts or not any(parts):  # not an arm64 cpuinfo at all (qemu-user shows the host's)
            model = "arm64 CPU (its cpuinfo names no cores)"
        big = sum(1 for p in parts if p not in ARM_LITTLE_PARTS) or logical
        physical = logical
    else:
        model = first.get("model name", platform.processor() or "unknown")
        cores = {(p.get("physical id", "0"), p.get("core id", str(i))) for i, p in enumerate(procs)}
        physical = len(cores) or logical
        big = physical
    return CPUInfo(model=model or "unknown", flags=flags, logical_cores=logical, physical_cores=physical, big_cores=big)


def parse_nvidia_smi(text: str) -> list[GPU]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(GPU(parts[0], "nvidia", int(parts[1]) << 20, int(parts[2]) << 20))
    return gpus


# Linux's auxiliary vector on arm64 (asm/hwcap.h): the same facts as cpuinfo's Features line
AT_HWCAP, AT_HWCAP2 = 16, 26
HWCAP_BITS = {(AT_HWCAP, 1 << 1): "neon", (AT_HWCAP, 1 << 20): "dotprod", (AT_HWCAP, 1 << 22): "sve",
              (AT_HWCAP2, 1 << 1): "sve2", (AT_HWCAP2, 1 << 13): "i8mm"}


def hwcap_flags(getauxval: Callable[[int], int]) -> list[str]:
    """arm64 features from the kernel's HWCAP words (``getauxval``)."""
    words = {key: getauxval(key) for key in (AT_HWCAP, AT_HWCAP2)}
    return sorted({name for (key, bit), name in HWCAP_BITS.items() if words[key] & bit})


def _auxval() -> Callable[[int], int] | None:
    try:
        import ctypes

        fn = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return lambda key: int(fn(key))


def _probe_cpu(arch: str) -> CPUInfo:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        info = parse_cpuinfo(cpuinfo.read_text(errors="replace"), arch)
        getauxval = _auxval() if arch in ("aarch64", "arm64") and not info.flags else None
        if getauxval is not None:
            # a cpuinfo without a Features line (qemu-user shows the host's; some containers a stub):
            # the kernel's HWCAP words say what this CPU runs
            info.flags = hwcap_flags(getauxval)
    else:  # macOS / Windows: no flags file; the core counts still matter most
        logical = os.cpu_count() or 1
        info = CPUInfo(platform.processor() or "unknown", [], logical, logical, logical)
        if platform.system() == "Darwin" and arch == "arm64":
            info.flags = ["dotprod", "neon"]
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        if physical and not arch.startswith(("aarch64", "arm")):
            info.physical_cores = info.big_cores = physical
    except ImportError:
        pass
    return info


def _probe_gpus() -> list[GPU]:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=False,
            )
            if out.returncode == 0:
                return parse_nvidia_smi(out.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        import psutil

        mem = psutil.virtual_memory()  # Apple silicon: the GPU shares system memory
        return [GPU("Apple GPU (Metal)", "apple", mem.total, mem.available)]
    return []


@functools.lru_cache(maxsize=1)
def probe() -> DeviceFacts:
    """Probe this machine once per process (GPU free memory is as of the first call). What the
    installed native runtimes can do is added by ``engine.backends.native.probe_device``."""
    import psutil

    arch = platform.machine().lower() or "unknown"
    mem = psutil.virtual_memory()
    return DeviceFacts(
        os=platform.system(),
        arch=arch,
        cpu=_probe_cpu(arch),
        ram_total=mem.total,
        ram_available=mem.available,
        gpus=_probe_gpus(),
    )
