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


def test_arm64_features_from_the_kernels_hwcap_words_when_cpuinfo_has_none():
    """qemu-user shows the host's /proc/cpuinfo; the HWCAP words are the emulated CPU's own. These
    are words with the bits of a Cortex-A76 (NEON and dot product) and of a CPU with SVE, SVE2 and i8mm."""
    from autoglm.engine.hardware import AT_HWCAP, AT_HWCAP2, hwcap_flags

    pi5 = {AT_HWCAP: 0x8FFF, AT_HWCAP2: 0}  # fp, asimd (bit 1), aes, ...; asimddp (bit 20) not yet
    assert hwcap_flags(pi5.__getitem__) == ["neon"]
    pi5[AT_HWCAP] |= 1 << 20
    assert hwcap_flags(pi5.__getitem__) == ["dotprod", "neon"]
    newer = {AT_HWCAP: (1 << 1) | (1 << 20) | (1 << 22), AT_HWCAP2: (1 << 1) | (1 << 13)}
    assert hwcap_flags(newer.__getitem__) == ["dotprod", "i8mm", "neon", "sve", "sve2"]
    host = parse_cpuinfo((DATA / "cpuinfo" / "amd-epyc-zen4-vm.txt").read_text(), "aarch64")
    assert host.flags == []  # an x86 cpuinfo read on arm64 gives nothing: the HWCAP fallback applies
    assert host.model == "arm64 CPU (its cpuinfo names no cores)"  # not the x86 "model : 2" line
