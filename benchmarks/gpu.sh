#!/usr/bin/env bash
# The GPU path, proven on a machine with an NVIDIA GPU and no network (a lent device machine):
#   benchmarks/gpu.sh build SRC.tgz WHEELS_DIR   llama.cpp with CUDA from the llama-cpp-python sdist
#                                                (its vendored sources: the library, llama-bench and
#                                                llama-server in one build), installed into $GPU_WORK/site
#                                                with the carried wheels of what the machine lacks
#   benchmarks/gpu.sh test MODEL.gguf            doctor, run, the gpu tests, `autoglm tune` of the planned
#                                                offload (other layer splits are measured when the plan
#                                                offloads part of the model: a model larger than free VRAM),
#                                                then the decode and serve benchmarks against llama-bench /
#                                                llama-server -ngl 99
# SRC.tgz: the sdist unpacked, minus its .git pack, docs and test models (about 11 MB).
set -euo pipefail
W=${GPU_WORK:-/tmp/autoglm-gpu}
case ${1:-} in
build)
  mkdir -p "$W"
  tar xzf "$2" -C "$W"
  src=$(echo "$W"/llama_cpp_python-*/vendor/llama.cpp)
  cmake -S "$src" -B "$W/build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >"$W/cmake.log" 2>&1 || { tail -30 "$W/cmake.log"; exit 1; }
  cmake --build "$W/build" -j"$(nproc)" --target llama llama-bench llama-server >"$W/build.log" 2>&1 ||
    { tail -40 "$W/build.log"; exit 1; }
  mkdir -p "$W/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$W/site" "$3"/*.whl
  cp -r "$W"/llama_cpp_python-*/llama_cpp "$W/site/"
  mkdir -p "$W/site/llama_cpp/lib"
  find "$W/build" -name "*.so*" -exec cp -P {} "$W/site/llama_cpp/lib/" \;
  echo "built: $(ls "$W/site/llama_cpp/lib" | tr '\n' ' ')"
  ;;
test)
  export PYTHONPATH="$W/site:$PWD" PYTHONUNBUFFERED=1 AUTOGLM_HOME="$W/home" AUTOGLM_GPU_MODEL="$2"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -m autoglm doctor --model "$2"
  python3 -m autoglm run --model "$2" --temperature 0 --max-tokens 16 "What is the capital of France? Answer in one word."
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -s
  python3 -m autoglm tune "$2" --budget "${TUNE_S:-60}"
  LLAMA_BENCH="$W/build/bin/llama-bench" python3 benchmarks/decode.py --model "$2" --reps "${REPS:-5}"
  LLAMA_SERVER="$W/build/bin/llama-server" python3 benchmarks/serve.py --model "$2" --streams "${STREAMS:-1,8,32,64}" \
    --parallel "${PARALLEL:-64}" --ctx 1024 --rounds "${ROUNDS:-5}" --no-prefix
  ;;
*)
  echo "usage: $0 build SRC.tgz WHEELS_DIR | test MODEL.gguf" >&2; exit 2 ;;
esac
