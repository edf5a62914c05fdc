import pytest

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.models.gguf_info import ModelFacts
from autoglm.engine.planner import Overrides, make_plan
from autoglm.engine.selftest import Verdict
from tests.conftest import DATA

SMOLLM2 = ModelFacts(path="smollm2.gguf", size=98_362_432, architecture="llama", name="SmolLM2", quant="Q4_1",
                     n_layers=30, n_embd=576, n_head=9, n_head_kv=3, context_length=8192, n_params=134_515_008)
LLAMA_8B = ModelFacts(path="llama8b.gguf", size=5_730_000_000, architecture="llama", name="Llama 8B",
                      quant="Q5_K_M", n_layers=32, n_embd=4096, n_head=32, n_head_kv=8, context_length=131072,
                      n_params=8_030_000_000)
PASSED = Verdict("extra_bufts:Q4_1", True, "passed", "", "m.gguf", 0.0)
CRASHED = Verdict("extra_bufts:Q4_1", False, "crashed", "child killed by SIGSEGV", "m.gguf", 0.0)


def device(name: str) -> DeviceFacts:
    return DeviceFacts.load(DATA / "devices" / f"{name}.json")


def every_choice_has_a_reason(plan) -> None:
    for key in ("backend", "threads", "n_ctx", "gpu_layers", "use_extra_bufts", "kernels", "n_batch",
                "flash_attn", "use_mmap"):
        assert plan.reasons[key].strip(), key


def test_this_machine_cpu_plan():
    plan = make_plan(SMOLLM2, device("epyc-2core-vm"), PASSED)
    every_choice_has_a_reason(plan)
    assert plan.threads == 2 and plan.gpu_layers == 0
    assert plan.n_ctx == 4096 and plan.use_extra_bufts
    assert "AVX-512" in plan.kernels
    assert "no GPU" in plan.reasons["gpu_layers"]
    assert "Q4_0" in plan.reasons["kernels"]  # tells the user the faster quant for this CPU


def test_crashed_selftest_falls_back_to_plain_buffers():
    plan = make_plan(SMOLLM2, device("epyc-2core-vm"), CRASHED)
    assert plan.use_extra_bufts is False
    assert "SIGSEGV" in plan.reasons["use_extra_bufts"] and "use_extra_bufts=False" in plan.reasons["use_extra_bufts"]


def test_untested_and_safe_mode_are_conservative():
    assert make_plan(SMOLLM2, device("epyc-2core-vm"), None).use_extra_bufts is False
    safe = make_plan(SMOLLM2, device("desktop-rtx2060-6gb"), PASSED, Overrides(safe=True))
    assert safe.use_extra_bufts is False and safe.gpu_layers == 0


def test_raspberry_pi_5():
    plan = make_plan(SMOLLM2, device("raspberry-pi-5"), PASSED)
    every_choice_has_a_reason(plan)
    assert plan.threads == 4 and plan.gpu_layers == 0
    assert plan.n_ctx == 2048  # a board with under 8 GiB gets a smaller default context
    assert plan.kernels == "ARM neon+dotprod"
    assert "Q4_0" in plan.reasons["kernels"] and "repacks Q4_0 into 4x4" in plan.reasons["kernels"]


def test_desktop_6gb_gpu_offloads_small_model_fully_and_big_model_partly():
    dev = device("desktop-rtx2060-6gb")
    small = make_plan(SMOLLM2, dev, PASSED)
    every_choice_has_a_reason(small)
    assert small.gpu_layers == 31 and small.flash_attn
    assert "all 31 layers" in small.reasons["gpu_layers"]
    assert small.threads == 6 and "SMT" in small.reasons["threads"]
    big = make_plan(LLAMA_8B, dev, PASSED)
    assert 10 < big.gpu_layers < 33, big.reasons["gpu_layers"]
    assert "of 33 layers" in big.reasons["gpu_layers"] and big.flash_attn  # what the scheduler uses


def test_gpu_without_offload_build_says_how_to_fix():
    dev = device("desktop-rtx2060-6gb")
    dev.llama_gpu_offload = False
    plan = make_plan(SMOLLM2, dev, PASSED)
    assert plan.gpu_layers == 0 and "GGML_CUDA" in plan.reasons["gpu_layers"]


def test_old_cpu_without_avx2():
    plan = make_plan(SMOLLM2, device("core2-no-avx2"), None)
    every_choice_has_a_reason(plan)
    assert plan.kernels.startswith("SSE")
    assert "no AVX2" in plan.reasons["kernels"] and "GGML_NATIVE=OFF" in plan.reasons["kernels"]
    assert plan.n_ctx == 2048


def test_context_shrinks_to_fit_ram_and_overrides_win():
    dev = device("raspberry-pi-5")
    dev.ram_available = 5 * (1 << 30)
    plan = make_plan(LLAMA_8B, dev, PASSED)
    assert plan.n_ctx < 2048 and "reduced to fit" in plan.reasons["n_ctx"]
    forced = make_plan(SMOLLM2, dev, PASSED, Overrides(threads=3, ctx=1024))
    assert (forced.threads, forced.n_ctx) == (3, 1024)
    assert forced.reasons["threads"] == "set by the user"


@pytest.mark.parametrize("bad", [Overrides(threads=0), Overrides(ctx=8), Overrides(gpu_layers=-5)])
def test_bad_overrides_are_rejected(bad):
    with pytest.raises(InvalidArgumentError):
        make_plan(SMOLLM2, device("epyc-2core-vm"), PASSED, bad)


# Boards as their /proc/cpuinfo shows them (tests/data/cpuinfo), with the RAM they ship with.
BOARDS = [
    # sample, RAM GiB, threads, kernels, words the kernel reason must carry
    ("raspberry-pi-5.txt", 8, 4, "ARM neon+dotprod", "4x4 blocks for the dotprod"),
    ("raspberry-pi-4.txt", 4, 4, "ARM neon", "no dotprod"),
    ("rk3588-big-little.txt", 16, 4, "ARM neon+dotprod", "4x4 blocks for the dotprod"),
    ("jetson-orin-nano.txt", 8, 6, "ARM neon+dotprod", "4x4 blocks for the dotprod"),
    ("aws-graviton3.txt", 8, 4, "ARM neon+dotprod+i8mm+sve", "4x8 blocks for the i8mm"),
]


@pytest.mark.parametrize(("sample", "ram_gib", "threads", "kernels", "why"), BOARDS)
def test_arm_boards_from_their_cpuinfo(sample, ram_gib, threads, kernels, why):
    import dataclasses

    from autoglm.engine.hardware import parse_cpuinfo
    from autoglm.engine.planner import choose_quant

    cpu = parse_cpuinfo((DATA / "cpuinfo" / sample).read_text(), "aarch64")
    board = DeviceFacts(os="Linux", arch="aarch64", cpu=cpu, ram_total=ram_gib * 2**30,
                        ram_available=int(ram_gib * 0.8 * 2**30), llama_cpp_version="0.3.36")
    plan = make_plan(dataclasses.replace(SMOLLM2, quant="Q4_0"), board, PASSED)
    every_choice_has_a_reason(plan)
    assert plan.threads == threads, plan.reasons["threads"]  # big cores only on big.LITTLE
    assert plan.kernels == kernels and why in plan.reasons["kernels"], plan.reasons["kernels"]
    q4_1_plan = make_plan(SMOLLM2, board, PASSED)
    if "dotprod" in kernels:
        assert "Q4_0 would be faster" in q4_1_plan.reasons["kernels"]
    quant, reason = choose_quant({"Q8_0": 145_000_000, "Q4_K_M": 105_000_000, "Q4_0": 92_000_000}, board)
    assert quant == "Q4_0" and ("repacked" in reason or "without dotprod" in reason)


def test_vram_sizes_context_kv_type_and_slots_when_the_model_fits_on_the_gpu():
    """#13: with every layer on the GPU the KV cache lives in VRAM, so VRAM (not RAM) sizes it."""
    import dataclasses

    dev = device("desktop-rtx2060-6gb")
    small = make_plan(SMOLLM2, dev, PASSED)
    assert small.n_ctx == 8192 and "from VRAM" in small.reasons["n_ctx"] and small.kv_type == "f16"
    assert small.slots == 64 and "fit the KV budget on the GPU" in small.reasons["slots"]
    # an 8 GB card with an 8B model: weights fit, an f16 cache would leave 4096 tokens, q8_0 doubles it
    card = dataclasses.replace(dev.gpus[0], memory_free=int(6.7 * (1 << 30)), memory_total=8 << 30)
    tight = make_plan(LLAMA_8B, dataclasses.replace(dev, gpus=[card]), PASSED)
    assert tight.gpu_layers == 33, tight.reasons["gpu_layers"]
    assert tight.kv_type == "q8_0" and tight.n_ctx == 8192 and "f16 would fit only 4096" in tight.reasons["n_ctx"]
    assert "halves the KV cache" in tight.reasons["kv_type"]
    # partial offload: the cache stays f16, the context comes from RAM, few slots
    big = make_plan(LLAMA_8B, dev, PASSED)
    assert big.kv_type == "f16" and "from VRAM" not in big.reasons["n_ctx"] and big.slots <= 4
    # no layer on the GPU: nothing planned from VRAM
    cpu = make_plan(SMOLLM2, dev, PASSED, Overrides(gpu_layers=0))
    assert cpu.gpu_layers == 0 and "from VRAM" not in cpu.reasons["n_ctx"] and cpu.slots == 4


def test_cpu_plans_keep_four_slots_or_fewer_when_ram_is_short():
    assert make_plan(SMOLLM2, device("epyc-2core-vm"), PASSED).slots == 4
    pi = make_plan(LLAMA_8B, device("raspberry-pi-5"), PASSED)
    assert pi.slots == 1 and pi.kv_type == "f16"


def test_onnx_provider_is_cuda_only_where_it_can_run():
    from autoglm.engine.planner import onnx_provider

    gpu_box = device("desktop-rtx2060-6gb")
    gpu_box.onnx_providers = ["CPUExecutionProvider"]  # the plain onnxruntime wheel
    assert "pip install onnxruntime-gpu" in onnx_provider(gpu_box, "fp32")[1]
    gpu_box.onnx_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_provider(gpu_box, "fp32") == ("CUDAExecutionProvider",
                                              "fp32 graphs on the NVIDIA GPU (onnxruntime-gpu's CUDA provider)")
    assert onnx_provider(gpu_box, "int8")[0] == "CPUExecutionProvider"
    assert onnx_provider(gpu_box, "fp32", safe=True)[0] == "CPUExecutionProvider"
    cpu_box = device("epyc-2core-vm")
    cpu_box.onnx_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "no NVIDIA GPU" in onnx_provider(cpu_box, "fp32")[1]
