#!/usr/bin/env bash
# Build the peer, llama.cpp, reproducibly from the source vendored in the
# llama-cpp-python sdist on PyPI, plus our own tools scripts/llama_cpp_greedy.cpp and
# scripts/llama_cpp_logits.cpp.
#
# Usage (from anywhere; paths are relative to the repo root):
#   scripts/build-llama-cpp.sh            # clang-19 build, GGML_NATIVE=ON -> target/llama.cpp/build-clang
#   scripts/build-llama-cpp.sh --plain    # gcc build, native, AMX disabled -> target/llama.cpp/build-plain
#   JOBS=4 scripts/build-llama-cpp.sh     # parallel build jobs (default 2)
#
# Idempotent: apt packages, the sdist download, the extraction and the cmake
# configure are each skipped when already done; a rerun only rebuilds what changed.
#
# What it does:
#   1. apt-get installs clang-19, libomp-19-dev, cmake (or gcc/g++ for --plain) if missing.
#   2. pip-downloads llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist, --no-binary :all:)
#      into target/llama.cpp/src and extracts it; llama.cpp is vendor/llama.cpp inside it.
#   3. cmake: -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release
#      (shared libs), and builds only: llama (libllama.so + ggml libs), llama-simple,
#      llama-tokenize, llama-bench, llama-batched-bench, llama-quantize, llama-server.
#   4. compiles scripts/llama_cpp_greedy.cpp and scripts/llama_cpp_logits.cpp against
#      include/llama.h and libllama.so into <build>/bin/llama-cpp-greedy and
#      llama-cpp-logits (rpath set, no LD_LIBRARY_PATH needed).
#
# The machine's CPU decides what GGML_NATIVE enables. On Intel CPUs with AMX, gcc 12
# miscompiles the AMX path (SIGILL), hence --plain adds -mno-amx-tile -mno-amx-int8
# -mno-amx-bf16; clang 19 is fine with AMX. Never commit anything from target/.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
VARIANT=clang
for arg in "$@"; do
    case "$arg" in
        --plain) VARIANT=plain ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="$ROOT/target/llama.cpp"
SRC_DIR="$BASE/src"
SDIST="$SRC_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
PKG_DIR="$SRC_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
LLAMA_DIR="$PKG_DIR/vendor/llama.cpp"
BUILD_DIR="$BASE/build-$VARIANT"

log() { echo "[build-llama-cpp] $*" >&2; }

# ---- 1. toolchain -------------------------------------------------------------
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
need_pkgs=()
command -v cmake >/dev/null || need_pkgs+=(cmake)
if [ "$VARIANT" = clang ]; then
    command -v clang-19 >/dev/null || need_pkgs+=(clang-19)
    [ -e /usr/lib/llvm-19/lib/libomp.so ] || need_pkgs+=(libomp-19-dev)
else
    command -v gcc >/dev/null || need_pkgs+=(gcc)
    command -v g++ >/dev/null || need_pkgs+=(g++)
fi
command -v make >/dev/null || command -v ninja >/dev/null || need_pkgs+=(make)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing: ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

# ---- 2. source ------------------------------------------------------------------
mkdir -p "$SRC_DIR"
if [ ! -f "$SDIST" ]; then
    log "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
    PY=python3; command -v python3 >/dev/null || PY=python
    "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$SRC_DIR" >&2 ||
    "$PY" -m pip download --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$SRC_DIR" >&2
fi
if [ ! -f "$LLAMA_DIR/include/llama.h" ]; then
    log "extracting $SDIST"
    tar -xzf "$SDIST" -C "$SRC_DIR"
fi
# The sdist's vendor/llama.cpp/.git is a dangling submodule pointer; git commands in
# build-info.cmake fail on it (-> commit "unknown"), which is what we want: never pick
# up this repository's own commit. We pass an explicit build id instead.

# ---- 3. configure + build -------------------------------------------------------
CMAKE_ARGS=(
    -S "$LLAMA_DIR" -B "$BUILD_DIR"
    -DCMAKE_BUILD_TYPE=Release
    -DGGML_NATIVE=ON
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DBUILD_SHARED_LIBS=ON
    -DLLAMA_BUILD_NUMBER=0
    "-DLLAMA_BUILD_COMMIT=llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
)
if [ "$VARIANT" = clang ]; then
    CC_BIN=clang-19; CXX_BIN=clang++-19
    CMAKE_ARGS+=(-DCMAKE_C_COMPILER=clang-19 -DCMAKE_CXX_COMPILER=clang++-19)
    EXTRA_FLAGS=""
else
    CC_BIN=gcc; CXX_BIN=g++
    EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS+=(-DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++
                 "-DCMAKE_C_FLAGS=$EXTRA_FLAGS" "-DCMAKE_CXX_FLAGS=$EXTRA_FLAGS")
fi
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ] ||
   ! grep -q '^LLAMA_BUILD_SERVER:BOOL=ON' "$BUILD_DIR/CMakeCache.txt"; then
    log "configuring ($VARIANT) in $BUILD_DIR"
    cmake "${CMAKE_ARGS[@]}" >&2
fi

TARGETS=(llama llama-simple llama-tokenize llama-bench llama-batched-bench llama-quantize llama-server)
start=$(date +%s)
log "building ${TARGETS[*]} with -j$JOBS"
cmake --build "$BUILD_DIR" --config Release -j"$JOBS" --target "${TARGETS[@]}" >&2

# ---- 4. our tool ------------------------------------------------------------------
for tool in greedy logits; do
    TOOL_SRC="$ROOT/scripts/llama_cpp_$tool.cpp"
    TOOL_BIN="$BUILD_DIR/bin/llama-cpp-$tool"
    if [ ! -x "$TOOL_BIN" ] || [ "$TOOL_SRC" -nt "$TOOL_BIN" ] ||
       [ "$BUILD_DIR/bin/libllama.so" -nt "$TOOL_BIN" ]; then
        log "compiling $TOOL_SRC"
        # shellcheck disable=SC2086
        "$CXX_BIN" -std=c++17 -O2 $EXTRA_FLAGS \
            -I"$LLAMA_DIR/include" -I"$LLAMA_DIR/ggml/include" \
            "$TOOL_SRC" -o "$TOOL_BIN" \
            -L"$BUILD_DIR/bin" -lllama -lggml -lggml-base \
            -Wl,-rpath,"$BUILD_DIR/bin"
    fi
done
log "build took $(( $(date +%s) - start )) s"

echo "llama.cpp ($VARIANT build, llama-cpp-python $LLAMA_CPP_PYTHON_VERSION) binaries in $BUILD_DIR/bin:"
for b in llama-simple llama-tokenize llama-bench llama-batched-bench llama-quantize llama-server llama-cpp-greedy llama-cpp-logits libllama.so; do
    [ -e "$BUILD_DIR/bin/$b" ] && echo "  $BUILD_DIR/bin/$b"
done
