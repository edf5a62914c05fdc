from autoglm.engine.hardware import DeviceFacts, parse_cpuinfo, parse_nvidia_smi
from tests.conftest import DATA


def _cpu(name: str, arch: str):
    return parse_cpuinfo((DATA / "cpuinfo" / name).read_text(), arch)


def test_amd_epyc_vm_has_avx512_vnni_and_no_amx():
    cpu = _cpu("amd-epyc-zen4-vm.txt", "x86_64")
    assert cpu.model == "AMD EPYC"
    assert {"avx2", "avx512", "avx512_vnni"} <= set(cpu.flags)
    assert "amx" not in cpu.flags
    assert cpu.logical_cores == 2


def test_sapphire_rapids_reports_amx_and_physical_cores():
    cpu = _cpu("xeon-sapphire-rapids-amx.txt", "x86_64")
    assert {"amx", "amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni"} <= set(cpu.flags)
    assert cpu.logical_cores == 4
    assert cpu.physical_cores == 2  # two SMT siblings per core


def test_raspberry_pi_5_is_four_a76_with_dotprod():
    cpu = _cpu("raspberry-pi-5.txt", "aarch64")
    assert cpu.model.startswith("Cortex-A76") and "Raspberry Pi 5" in cpu.model
    assert cpu.flags == ["dotprod", "neon"]
    assert (cpu.logical_cores, cpu.big_cores) == (4, 4)


def test_big_little_board_counts_only_big_cores():
    cpu = _cpu("rk3588-big-little.txt", "aarch64")
    assert cpu.logical_cores == 8
    assert cpu.big_cores == 4
    assert "Cortex-A55" in cpu.model and "Cortex-A76" in cpu.model


def test_nvidia_smi_parsing_in_bytes():
    gpus = parse_nvidia_smi("NVIDIA GeForce RTX 2060, 6144, 5800\nNVIDIA H100 80GB HBM3, 81559, 80000\n")
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 2060", "NVIDIA H100 80GB HBM3"]
    assert gpus[0].memory_total == 6144 << 20 and gpus[0].memory_free == 5800 << 20


def test_probe_this_machine_is_cached_and_round_trips():
    from autoglm.engine.backends import native

    facts = native.probe_device()
    assert facts is native.probe_device()
    assert facts.cpu.logical_cores >= 1 and facts.ram_total > 0
    assert facts.llama_cpp_version  # llama-cpp-python is a hard dependency
    assert "CPUExecutionProvider" in facts.onnx_providers
    assert DeviceFacts.from_dict(facts.to_dict()) == facts
