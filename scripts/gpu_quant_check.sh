#!/usr/bin/env bash
# Issue 17's first GPU check, for a short lease: the quantised-weight GPU tests (every GGUF
# type and MLX kernel against the CPU), one `bench engine` of the Llama-3.1-8B Q4_K_M mix on
# random weights, then the other GPU tests. The llama.cpp comparison is
# scripts/gpu_quant_vs_llama_cpp.sh (about 12 device minutes more).
#
# Build here and carry in a git-ignored DIR (default .gpu): `cargo test -p kr-cuda --test gpu
# --no-run` → DIR/gpu_test and `cargo build --release -p kr-serve` → DIR/kr-serve, both
# stripped. On the GPU machine, from the repository root: scripts/gpu_quant_check.sh
# (results in $OUT, else /tmp/kr-gpu-check).
set -uo pipefail
DIR=${DIR:-.gpu}
OUT=${OUT:-/tmp/kr-gpu-check}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# The test binary finds its fixtures under the path it was built at.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
echo "== quantised-weight tests"
timeout 150 "$DIR/gpu_test" --ignored --test-threads 1 --nocapture quant mlx > "$OUT/quant_tests.log" 2>&1
grep -E "^test |test result|panicked" "$OUT/quant_tests.log" | head -60
echo "== bench engine, random Llama-3.1-8B Q4_K_M mix"
timeout 90 "$DIR/kr-serve" bench engine --device cuda --random-weights --arch llama-3.1-8b:q4_k_m \
  --prompt-tokens 128 --gen-tokens 64 --prefill-tokens 512 --batch-sizes 1,8,32 --repeat 1 \
  --out "$OUT/rw-8b-q4km.json" > "$OUT/rw-8b-q4km.log" 2>&1
grep -iE "error|panic|decode|prefill|weights" "$OUT/rw-8b-q4km.log" | head -12
echo "== the other GPU tests"
timeout 120 "$DIR/gpu_test" --ignored --test-threads 1 --skip quant --skip mlx > "$OUT/all_tests.log" 2>&1
grep -E "test result|panicked|FAILED" "$OUT/all_tests.log" | head -20
