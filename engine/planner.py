"""Model + device + user overrides -> a Plan, every choice with a one-line reason.

``make_plan`` is a pure function of its inputs, so recorded device profiles (a Raspberry Pi 5,
a 6 GB GPU desktop, an old CPU without AVX2) test it without that hardware.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.hardware import DeviceFacts

if TYPE_CHECKING:  # the model manager imports the planner (quant choice); keep the import one-way
    from autoglm.engine.models.gguf_info import ModelFacts
    from autoglm.engine.selftest import Verdict
    from autoglm.engine.tuning.search import Tuned

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_CTX = 4096
SMALL_BOARD_CTX = 2048
VRAM_RESERVE = 512 * MiB  # driver, CUDA context and compute buffers
GPU_MAX_CTX = 32768  # a context beyond this is a choice for the user (--ctx), not a default
GPU_Q8_BELOW = 8192  # an f16 KV cache that leaves less context than this is worth quantizing
KV_Q8_RATIO = 34 / 64  # q8_0 stores 32 values in 34 bytes; f16 takes 64
SERVE_SEQ_CTX = 2048  # what `serve` gives each sequence by default
CPU_SLOTS = 4  # on a CPU, more parallel sequences than this add latency, not throughput
MAX_SLOTS = 64
# Beyond these llama.cpp allocates before it checks (std::bad_alloc aborts the process): thread pools,
# and a context no GGUF of ours declares (the largest train contexts are 1M tokens).
MAX_THREADS = 512
MAX_CTX = 1 << 20
RAM_HEADROOM = 0.8  # leave the OS and the app a fifth of what is free


@dataclass
class Overrides:
    threads: int | None = None
    ctx: int | None = None
    gpu_layers: int | None = None
    batch: int | None = None
    safe: bool = False  # force the most conservative kernels (GUI "restart in safe mode")

    def validate(self) -> None:
        for name in ("threads", "ctx", "batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidArgumentError(f"--{name} must be at least 1, got {value}")
        if self.gpu_layers is not None and self.gpu_layers < -1:
            raise InvalidArgumentError(f"--gpu-layers must be -1 (all) or more, got {self.gpu_layers}")
        if self.ctx is not None and self.ctx < 64:
            raise InvalidArgumentError(f"--ctx must be at least 64 tokens, got {self.ctx}")
        if self.threads is not None and self.threads > MAX_THREADS:
            raise InvalidArgumentError(f"--threads must be at most {MAX_THREADS}, got {self.threads}")
        if self.ctx is not None and self.ctx > MAX_CTX:
            raise InvalidArgumentError(f"--ctx must be at most {MAX_CTX} tokens, got {self.ctx}")


@dataclass
class Plan:
    backend: str
    model_path: str
    threads: int
    threads_batch: int
    gpu_layers: int
    n_ctx: int
    n_batch: int
    n_ubatch: int
    use_extra_bufts: bool
    flash_attn: bool
    use_mmap: bool
    kernels: str
    reasons: dict[str, str] = field(default_factory=dict)
    kv_type: str = "f16"  # q8_0 when f16 would not leave a useful context in free VRAM
    kv_tokens: int = 0  # KV cells that fit where the cache lives (RAM or VRAM): the server's budget
    slots: int = CPU_SLOTS  # parallel sequences `serve` runs unless told otherwise
    threads_busy: int = 0  # decode threads while other processes load a core, as measured (0: not measured)
    threads_adaptive: bool = True  # fewer threads while other processes take cores (off when the user set them)
    wait_policy: str = "spin"  # OpenMP workers between steps: "spin" (llama.cpp's default) or "passive"
    measured: bool = False  # settings from `autoglm tune` rather than rules
    split_prompt: bool = False  # long steps on plain weights, short ones on repacked ones (SplitExecutor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt_gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _threads(device: DeviceFacts, ov: Overrides) -> tuple[int, str]:
    if ov.threads:
        return ov.threads, "set by the user"
    cpu = device.cpu
    if device.is_arm and cpu.big_cores < cpu.logical_cores:
        return cpu.big_cores, (f"{cpu.big_cores} big cores of {cpu.logical_cores}: a thread on a little core "
                               "stalls every step of the big ones")
    if cpu.physical_cores < cpu.logical_cores:
        return cpu.physical_cores, (f"{cpu.physical_cores} physical cores; SMT siblings share the vector "
                                    "units and slow llama.cpp down")
    return cpu.physical_cores, f"one per core ({cpu.physical_cores})"


def _kernels(device: DeviceFacts, model: ModelFacts) -> tuple[str, str]:
    has = device.has
    if device.is_arm:
        feats = [f for f in ("neon", "dotprod", "i8mm", "sve") if has(f)]
        path = "ARM " + "+".join(feats or ["generic"])
        if has("i8mm"):
            repack = "llama.cpp repacks Q4_0 into 4x8 blocks for the i8mm matrix instructions"
        elif has("dotprod"):
            repack = "llama.cpp repacks Q4_0 into 4x4 blocks for the dotprod instructions"
        else:
            return path, (f"{path}: no dotprod (an older core such as Cortex-A72), so none of llama.cpp's "
                          "repacked ARM kernels apply; plain NEON kernels, Q4_0 the fastest of them")
        if has("sve"):
            repack += " (8x8 on cores with 256-bit SVE vectors)"
        if model.quant != "Q4_0":
            return path, f"{path}; Q4_0 would be faster: {repack} (this model is {model.quant})"
        return path, f"{path}: {repack}"
    if has("avx512"):
        path = "AVX-512" + (" VNNI" if has("avx512_vnni") else "") + (" + AMX" if has("amx") else "")
    elif has("avx2"):
        path = "AVX2" + (" VNNI" if has("avx_vnni") else "")
    else:
        return "SSE (no AVX2)", ("no AVX2: llama.cpp falls back to slow SSE kernels; prefer small Q4_0 models, "
                                 "and a wheel built with -DGGML_NATIVE=OFF so it never uses AVX2")
    note = "; Q4_0 prefills about 2x faster than Q4_1 on such CPUs" if model.quant == "Q4_1" else ""
    return path, f"{path} kernels{note}"


def _extra_bufts(device: DeviceFacts, verdict: Verdict | None, ov: Overrides) -> tuple[bool, str]:
    amx = "AMX present" if device.has("amx") else "no AMX"
    if ov.safe:
        return False, f"safe mode: plain CPU buffers, no AMX/repacked weights ({amx})"
    if verdict is None:
        return False, f"extra buffer types (AMX/repack) not self-tested yet, so off ({amx})"
    if verdict.ok:
        return True, f"extra buffer types (AMX/repack) passed a crash-isolated self-test ({amx})"
    return False, (f"extra buffer types (AMX/repack) {verdict.summary()} in a crash-isolated self-test; "
                   f"falling back to use_extra_bufts=False ({amx})")


def _gpu_layers(device: DeviceFacts, model: ModelFacts, kv_bytes: int, ov: Overrides,
                gpu_verdict: Verdict | None = None) -> tuple[int, str]:
    total_layers = model.n_layers + 1  # + the output layer, which llama.cpp offloads last
    if gpu_verdict is not None and not gpu_verdict.ok:
        return 0, (f"GPU offload {gpu_verdict.summary()} in a crash-isolated self-test (driver, build or "
                   "runtime clash): running on the CPU")
    if ov.gpu_layers is not None:
        n = total_layers if ov.gpu_layers == -1 else min(ov.gpu_layers, total_layers)
        if n and not device.llama_gpu_offload:
            return 0, "GPU layers requested, but this llama-cpp-python build has no GPU offload"
        return n, "set by the user"
    if ov.safe:
        return 0, "safe mode: CPU only"
    if not device.gpus:
        return 0, "no GPU found"
    gpu = max(device.gpus, key=lambda g: g.memory_free)
    if not device.llama_gpu_offload:
        return 0, (f"{gpu.name} found, but this llama-cpp-python build is CPU-only "
                   "(reinstall with CMAKE_ARGS=-DGGML_CUDA=on, -DGGML_VULKAN=on or -DGGML_METAL=on)")
    budget = gpu.memory_free - VRAM_RESERVE - kv_bytes
    per_layer = model.size / total_layers
    n = max(0, min(total_layers, int(budget // per_layer))) if per_layer else 0
    if n == total_layers:
        return n, f"all {n} layers fit in {_fmt_gib(gpu.memory_free)} free on {gpu.name}"
    if n == 0:
        return 0, f"{gpu.name} has {_fmt_gib(gpu.memory_free)} free: not enough for one layer plus the KV cache"
    return n, (f"{n} of {total_layers} layers fit in {_fmt_gib(gpu.memory_free)} free on {gpu.name} "
               f"(after {_fmt_gib(VRAM_RESERVE)} reserve and the KV cache); the rest run on the CPU")


def _vram_budget(device: DeviceFacts, model: ModelFacts, ov: Overrides) -> tuple[int, str] | None:
    """Bytes of VRAM left for the KV cache when the whole model goes on a GPU, else None."""
    if ov.safe or ov.gpu_layers == 0 or not device.gpus or not device.llama_gpu_offload:
        return None
    gpu = max(device.gpus, key=lambda g: g.memory_free)
    left = gpu.memory_free - VRAM_RESERVE - model.size
    if left < model.kv_bytes_per_token() * 512:
        return None  # the model does not fit with a useful context: partial offload, KV in RAM
    return left, f"{_fmt_gib(gpu.memory_free)} free on {gpu.name}"


def _halve_to_fit(ctx: int, per_token: int, budget: float) -> int:
    while ctx > 512 and per_token * ctx > budget:
        ctx //= 2
    return ctx


def _context(device: DeviceFacts, model: ModelFacts, ov: Overrides) -> tuple[int, str, str, int]:
    """(n_ctx, why, KV cache type, KV cells that fit): from free VRAM when the model fits on a GPU
    (there the KV cache lives in VRAM too), else from free RAM."""
    vram = _vram_budget(device, model, ov)
    per_token = max(model.kv_bytes_per_token(), 1)
    if vram is not None:
        budget, where = vram
        want = min(model.context_length, GPU_MAX_CTX)
        ctx, kv_type = _halve_to_fit(want, per_token, budget), "f16"
        q8 = int(per_token * KV_Q8_RATIO)
        if ctx < min(want, GPU_Q8_BELOW) and _halve_to_fit(want, q8, budget) > ctx:
            kv_type, per_token, f16_ctx = "q8_0", q8, ctx
            ctx = _halve_to_fit(want, q8, budget)
        if ov.ctx:  # the user's context: q8_0 only if that one would not fit at f16
            if max(model.kv_bytes_per_token(), 1) * ov.ctx <= budget:
                kv_type, per_token = "f16", max(model.kv_bytes_per_token(), 1)
            return ov.ctx, "set by the user", kv_type, int(budget // per_token)
        why = (f"{ctx} tokens from VRAM: {where}, weights {_fmt_gib(model.size)}, KV cache "
               f"{per_token * ctx / MiB:.0f} MiB {kv_type}")
        if kv_type == "q8_0":
            why += f" (f16 would fit only {f16_ctx})"
        return ctx, why, kv_type, int(budget // per_token)
    ram_budget = device.ram_available * RAM_HEADROOM - model.size
    kv_tokens = max(int(ram_budget // per_token), 0)
    if ov.ctx:
        if ov.ctx > model.context_length:
            return ov.ctx, f"set by the user (beyond the {model.context_length} the model was trained for)", \
                "f16", kv_tokens
        return ov.ctx, "set by the user", "f16", kv_tokens
    want = SMALL_BOARD_CTX if device.ram_total < 8 * GiB else DEFAULT_CTX
    ctx = min(want, model.context_length)
    while ctx > 512 and model.kv_bytes_per_token() * ctx > ram_budget:
        ctx //= 2
    kv = model.kv_bytes_per_token() * ctx
    why = f"{ctx} tokens (KV cache {kv / MiB:.0f} MiB; model trained for {model.context_length})"
    if ctx < min(want, model.context_length):
        why += f", reduced to fit {_fmt_gib(device.ram_available)} of free RAM"
    return ctx, why, "f16", kv_tokens


def _slots(kv_tokens: int, on_gpu: bool) -> tuple[int, str]:
    """Parallel sequences for `serve`: on a GPU as many as the KV budget holds at the default
    sequence length (a GPU's step costs about the same for 1 or 64 rows); on a CPU a few."""
    fit = max(1, min(MAX_SLOTS, kv_tokens // SERVE_SEQ_CTX))
    if on_gpu:
        return fit, f"{fit} x {SERVE_SEQ_CTX} tokens fit the KV budget on the GPU (at most {MAX_SLOTS})"
    n = min(CPU_SLOTS, fit)
    return n, f"{n}: the model runs (at least partly) on the CPU, where more sequences add latency, not throughput"


def _apply_tuned(plan: Plan, tuned: Tuned, ov: Overrides, verdict: Verdict | None, model: ModelFacts,
                 device: DeviceFacts) -> Plan:
    """What `autoglm tune` measured beats the rules: each knob it moved, with the numbers; the
    user's own settings and safe mode still win."""
    if ov.safe or not tuned.best.ok:
        return plan
    best, base, idle, r = tuned.best, tuned.base, tuned.idle, plan.reasons
    ago = f"`autoglm tune`, {tuned.seconds:.0f} s"
    if not ov.threads:
        plan.threads, plan.threads_batch = idle.threads, idle.threads_batch
        r["threads"] = (f"measured: {idle.threads} for decode ({best.decode:.0f} tok/s), {idle.threads_batch} for "
                        f"prefill ({best.prefill:.0f} tok/s); the rule's {base.decode:.0f} / {base.prefill:.0f} "
                        f"({ago})")
        if tuned.busy is not None and tuned.busy_best and tuned.busy_base and tuned.busy.threads != idle.threads:
            plan.threads_busy = tuned.busy.threads
            r["threads_busy"] = (f"measured with another process on one core: {tuned.busy.threads} decode thread(s) "
                                 f"{tuned.busy_best.decode:.0f} tok/s, {idle.threads}: {tuned.busy_base.decode:.0f}; "
                                 "switched to while other processes keep a core busy")
    if idle.flash_attn != plan.flash_attn:
        plan.flash_attn = idle.flash_attn
        r["flash_attn"] = f"{'on' if idle.flash_attn else 'off'}: measured faster here ({ago})"
    if idle.kv_type != plan.kv_type and plan.kv_type == "f16" and plan.flash_attn:
        plan.kv_type = idle.kv_type
        r["kv_type"] = f"{idle.kv_type}: measured faster here ({ago})"
    if not ov.batch and idle.n_ubatch < plan.n_batch:
        plan.n_ubatch = idle.n_ubatch
        r["n_ubatch"] = f"{idle.n_ubatch}-token micro-batches: measured faster prefill here ({ago})"
    if idle.extra_bufts != plan.use_extra_bufts and (not idle.extra_bufts or (verdict and verdict.ok)):
        plan.use_extra_bufts = idle.extra_bufts
        r["use_extra_bufts"] += f"; {'on' if idle.extra_bufts else 'off'}: measured faster here for {tuned.workload}"
    if ov.gpu_layers is None and idle.gpu_layers and idle.gpu_layers != plan.gpu_layers:
        r["gpu_layers"] = (f"{idle.gpu_layers} of the model's layers: measured faster here than the {plan.gpu_layers} "
                           f"the free memory suggested ({ago})")
        plan.gpu_layers = idle.gpu_layers
    plan.wait_policy = idle.wait
    r["wait_policy"] = (f"{idle.wait}: measured faster here ({ago}); set when a process starts, before llama.cpp "
                        "loads (OMP_WAIT_POLICY in the environment wins)")
    plan.split_prompt, r["split_prompt"] = _split_prompt(plan, tuned, ov, model, device)
    plan.measured = True
    r["measured"] = (f"{ago}, for {tuned.workload}: prefill {best.prefill:.0f} tok/s, decode {best.decode:.0f} tok/s "
                     f"(the rules' settings: {base.prefill:.0f} / {base.decode:.0f})")
    return plan


SPLIT_GAIN = 1.2  # plain weights must prefill this much faster than repacked ones to load both


def _split_prompt(plan: Plan, tuned: Tuned, ov: Overrides, model: ModelFacts, device: DeviceFacts) -> tuple[bool, str]:
    """Both weight layouts at once (SplitExecutor) where `tune` measured repacking faster to decode
    but the plain weights faster to prefill, and free RAM holds a second copy of the weights and of
    the KV cache. On the GPU and in safe mode, never."""
    if ov.safe or plan.gpu_layers or not plan.use_extra_bufts:
        return False, "off: " + ("safe mode" if ov.safe else "layers on the GPU" if plan.gpu_layers
                                 else "one weight layout (no repacking)")
    same = [t for t in tuned.trials
            if t.speed.ok and not t.config.busy and t.config.threads_batch == plan.threads_batch]
    packed = max((t.speed.prefill for t in same if t.config.extra_bufts), default=0.0)
    plain = max((t.speed.prefill for t in same if not t.config.extra_bufts), default=0.0)
    if not packed or plain < packed * SPLIT_GAIN:
        return False, (f"off: plain weights prefilled {plain:.0f} tok/s, repacked {packed:.0f}: not {SPLIT_GAIN}x"
                       if packed and plain else "off: `tune` measured no prefill without repacking")
    fits, why = split_fits(model, device, plan.n_ctx, plan.slots, plan.kv_type)
    if not fits:
        return False, f"off: plain weights prefill {plain / packed:.2f}x faster, but {why}"
    return True, (f"on: prompt chunks and long drafts on plain weights ({plain:.0f} tok/s), decode steps on "
                  f"repacked ones ({packed:.0f} tok/s prefill; faster decode), as `tune` measured; {why}")


def split_fits(model: ModelFacts, device: DeviceFacts, ctx_per_seq: int, slots: int,
               kv_type: str = "f16") -> tuple[bool, str]:
    """Whether free RAM holds two copies of the weights and of the KV cache for ``slots`` sequences.
    The plan asks with its own slots; the loader asks again with the server's ``--parallel``, which
    may be more than planned."""
    kv = int(model.kv_bytes_per_token() * ctx_per_seq * slots * (KV_Q8_RATIO if kv_type == "q8_0" else 1))
    need, free = 2 * (model.size + kv), device.ram_available * RAM_HEADROOM
    if need > free:
        return False, (f"two copies of the weights and KV cache for {slots} x {ctx_per_seq} tokens "
                       f"({_fmt_gib(need)}) exceed free RAM ({_fmt_gib(int(free))})")
    return True, f"a second copy of the weights and KV cache, {_fmt_gib(model.size + kv)}"


def make_plan(model: ModelFacts, device: DeviceFacts, verdict: Verdict | None = None,
              overrides: Overrides | None = None, gpu_verdict: Verdict | None = None,
              tuned: Tuned | None = None) -> Plan:
    """Choose how to run ``model`` on ``device``; pure, so it is tested with recorded profiles."""
    ov = overrides or Overrides()
    ov.validate()
    reasons: dict[str, str] = {"backend": f"GGUF {model.quant} model: llama.cpp"}
    threads, reasons["threads"] = _threads(device, ov)
    reasons["threads_busy"] = ("as set: the user's count is kept even when other programs take cores" if ov.threads
                               else "fewer while other programs keep cores busy (no more threads than free cores, "
                                    "checked 4 times a second): a thread that waits for a core stalls every step")
    reasons["wait_policy"] = ("OpenMP workers spin between steps (llama.cpp's default); `autoglm tune` measures "
                              "whether sleeping ones run faster here")
    n_ctx, reasons["n_ctx"], kv_type, kv_tokens = _context(device, model, ov)
    kv_bytes = int(model.kv_bytes_per_token() * n_ctx * (KV_Q8_RATIO if kv_type == "q8_0" else 1))
    gpu_layers, reasons["gpu_layers"] = _gpu_layers(device, model, kv_bytes, ov, gpu_verdict)
    if gpu_layers <= model.n_layers and "from VRAM" in reasons["n_ctx"]:  # not all on the GPU after all (a
        # failed GPU self-test): the KV cache is in RAM, so RAM sizes it
        n_ctx, reasons["n_ctx"], kv_type, kv_tokens = _context(device, model, replace(ov, gpu_layers=0))
    reasons["kv_type"] = (f"{kv_type}: " + ("halves the KV cache so the context fits in VRAM" if kv_type == "q8_0"
                                            else "exact; it fits"))
    slots, reasons["slots"] = _slots(kv_tokens, gpu_layers > model.n_layers)
    extra, reasons["use_extra_bufts"] = _extra_bufts(device, verdict, ov)
    kernels, reasons["kernels"] = _kernels(device, model)
    n_batch = min(ov.batch or 512, n_ctx)
    reasons["n_batch"] = ("set by the user" if ov.batch else
                          f"{n_batch}-token prefill chunks: large enough for matrix kernels, bounded memory")
    reasons["flash_attn"] = ("on: it skips other sequences' KV cells exactly, so batched text equals solo text "
                             "on the CPU, and it measured faster for batches (CPU and GPU)")
    reasons["split_prompt"] = "off: `autoglm tune` measures whether plain weights prefill faster here"
    mmap = model.size < device.ram_available * RAM_HEADROOM
    reasons["use_mmap"] = ("on: the file maps into memory and loads instantly" if mmap else
                           f"off: {_fmt_gib(model.size)} model exceeds free RAM; reading it avoids page thrash")
    plan = Plan(
        backend="llamacpp", model_path=model.path, threads=threads, threads_batch=threads,
        gpu_layers=gpu_layers, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, use_extra_bufts=extra,
        flash_attn=True, use_mmap=mmap, kernels=kernels, reasons=reasons, kv_type=kv_type, kv_tokens=kv_tokens,
        slots=slots, threads_adaptive=not ov.threads,
    )
    return _apply_tuned(plan, tuned, ov, verdict, model, device) if tuned is not None else plan


# Best quality first; F16/F32 are left out of automatic choice (2-4x the memory traffic per token).
QUALITY = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "IQ4_XS", "IQ4_NL",
           "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"]


def choose_quant(sizes: dict[str, int], device: DeviceFacts) -> tuple[str, str]:
    """Pick a quant from a repo's offer: the best quality whose file takes at most half the memory
    that will hold it (free VRAM when llama.cpp can offload, else free RAM), leaving the rest for
    the KV cache and the system. ARM boards take Q4_0 when it fits: llama.cpp repacks it for the
    NEON dotprod/i8mm kernels, which is worth more there than the last bit of quality."""
    gpu = max(device.gpus, key=lambda g: g.memory_free) if device.gpus and device.llama_gpu_offload else None
    memory = gpu.memory_free if gpu else device.ram_available
    where = f"{_fmt_gib(memory)} free {'on ' + gpu.name if gpu else 'RAM'}"
    fits = {q: s for q, s in sizes.items() if s <= memory / 2}
    if device.is_arm and "Q4_0" in fits:
        why = ("ARM runs it with llama.cpp's repacked kernels" if device.has("dotprod") else
               "the fastest of the plain NEON kernels on a core without dotprod")
        return "Q4_0", f"Q4_0: fits in half of {where}, and {why}"
    for quant in QUALITY:
        if quant in fits:
            return quant, f"{quant}: the best quality whose file fits in half of {where}"
    if fits:
        quant = min(fits, key=lambda q: fits[q])
        return quant, f"{quant}: the only kind that fits in half of {where}"
    quant = min(sizes, key=lambda q: sizes[q])
    return quant, f"{quant}: the smallest on offer; nothing fits in half of {where}, expect swapping"


def onnx_provider(device: DeviceFacts, precision: str, safe: bool = False) -> tuple[str, str]:
    """Where onnxruntime runs an encoder: CUDA for fp32 graphs when onnxruntime-gpu and an NVIDIA
    GPU are here; int8 graphs stay on the CPU (their integer kernels are CPU kernels in
    onnxruntime, so CUDA would copy every layer back and forth)."""
    cuda = "CUDAExecutionProvider"
    if safe:
        return "CPUExecutionProvider", "safe mode: CPU only"
    if cuda not in device.onnx_providers:
        return "CPUExecutionProvider", ("this onnxruntime has no CUDA provider (on an NVIDIA machine: pip uninstall "
                                        "onnxruntime && pip install onnxruntime-gpu)")
    if not any("nvidia" in g.name.lower() or g.vendor == "nvidia" for g in device.gpus):
        return "CPUExecutionProvider", "onnxruntime has a CUDA provider, but no NVIDIA GPU was found"
    if precision == "int8":
        return "CPUExecutionProvider", "int8 graphs run on the CPU (onnxruntime's integer kernels are CPU kernels)"
    return cuda, "fp32 graphs on the NVIDIA GPU (onnxruntime-gpu's CUDA provider)"


def onnx_threads(device: DeviceFacts, llama_threads: int, gpu_layers: int = 0) -> tuple[int, str]:
    """Threads for the ONNX encoders of a server that also serves a chat model: the cores
    llama.cpp's threads leave free, so a classify request does not stall every token stream."""
    cores = device.cpu.big_cores or device.cpu.physical_cores or 1
    if gpu_layers > 0:
        return cores, f"{cores}: the chat model runs on the GPU, so the encoders have the CPU's cores"
    free = cores - llama_threads
    if free >= 1:
        return free, f"{free}: the cores llama.cpp's {llama_threads} threads leave free"
    return 1, (f"1: llama.cpp's {llama_threads} threads take all {cores} cores; an encoder request borrows one "
               "only while it runs")
