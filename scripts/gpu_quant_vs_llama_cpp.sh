#!/usr/bin/env bash
# Same-lease GPU comparison for quantised files (issue 17): llama.cpp's llama-bench and
# kr-serve's `bench engine --device cuda` on the very same GGUF files — Llama-3.1-8B shapes in
# bf16, Q4_K_M and Q8_0 and Llama-3.2-1B shapes in Q4_K_M (random weights, Llama-3 vocab,
# quantised with llama.cpp's llama-quantize).
#
# Run on the GPU machine from the repository root, with a stripped kr-serve, the peers
# tarball, make_random_gguf.py and the llama-bpe vocab GGUF in DIR (default .gpu):
#   scripts/gpu_quant_vs_llama_cpp.sh build   # starts llama.cpp's CUDA build (~5 min), returns
#   scripts/gpu_quant_vs_llama_cpp.sh files   # waits for it; writes and quantises the files
#   scripts/gpu_quant_vs_llama_cpp.sh bench   # both engines on every file, reports in $OUT
# (three calls, so each stays under the device's per-call limit).
set -euo pipefail
STEP=${1:?build, files or bench}
DIR=${DIR:-.gpu}
W=${WORK:-/tmp/kr-quant}
OUT=${OUT:-$W/out}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
mkdir -p "$W" "$OUT"
case "$STEP" in
build)
  tar xzf "$DIR"/llama.cpp-*-trimmed.tgz -C "$W"
  cd "$W/lc"
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF > cmake.log 2>&1
  setsid nohup bash -c 'cmake --build build -j16 --target llama-bench llama-quantize' \
    > build.log 2>&1 < /dev/null &
  python3 "$DIR/make_random_gguf.py" "$W/lc/gguf-py" "$DIR/ggml-vocab-llama-bpe.gguf" \
    "$W/8b-bf16.gguf" llama-3.1-8b
  python3 "$DIR/make_random_gguf.py" "$W/lc/gguf-py" "$DIR/ggml-vocab-llama-bpe.gguf" \
    "$W/1b-bf16.gguf" llama-3.2-1b
  ;;
files)
  while [ ! -x "$W/lc/build/bin/llama-quantize" ]; do sleep 5; done
  while pgrep -f "cmake --build" > /dev/null; do sleep 5; done
  Q="$W/lc/build/bin/llama-quantize"
  $Q "$W/8b-bf16.gguf" "$W/8b-Q4_K_M.gguf" Q4_K_M 16 > "$OUT/quantize-8b-q4km.log" 2>&1
  $Q "$W/8b-bf16.gguf" "$W/8b-Q8_0.gguf" Q8_0 16 > "$OUT/quantize-8b-q80.log" 2>&1
  $Q "$W/1b-bf16.gguf" "$W/1b-Q4_K_M.gguf" Q4_K_M 16 > "$OUT/quantize-1b-q4km.log" 2>&1
  ls -la "$W"/*.gguf
  ;;
bench)
  for f in 8b-bf16 8b-Q4_K_M 8b-Q8_0 1b-Q4_K_M; do
    "$W/lc/build/bin/llama-bench" -m "$W/$f.gguf" -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o json \
      > "$OUT/llama-bench-$f.json" 2> "$OUT/llama-bench-$f.log"
    "$DIR/kr-serve" bench engine --device cuda --model "$W/$f.gguf" --prompt-tokens 128 \
      --gen-tokens 128 --prefill-tokens 512 --batch-sizes 1,8,32 --repeat 2 \
      --out "$OUT/kr-serve-$f.json" 2> "$OUT/kr-serve-$f.log"
    python3 - "$OUT" "$f" <<'PY'
import json, sys, os
out, f = sys.argv[1], sys.argv[2]
ll = json.load(open(os.path.join(out, f"llama-bench-{f}.json")))
tg = next(r["avg_ts"] for r in ll if r["n_gen"] > 0)
pp = next(r["avg_ts"] for r in ll if r["n_prompt"] > 0)
kr = json.load(open(os.path.join(out, f"kr-serve-{f}.json")))["results"]
d1 = kr["decode_batch1"]["graphs_on"]["tokens_per_second"]
print(f"{f}: decode b1 kr-serve {d1:.1f} vs llama.cpp {tg:.1f} tok/s ({d1/tg:.2f}x); "
      f"pp512 llama.cpp {pp:.0f}; kr-serve prefill {kr['prefill']['tokens_per_second']:.0f} tok/s; "
      f"batched {[round(x['tokens_per_second']) for x in kr['decode_batched']]}")
PY
  done
  ;;
esac
