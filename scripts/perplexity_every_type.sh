#!/usr/bin/env bash
# Quantisation quality, both engines: re-quantises one GGUF file to every type kr-serve reads
# (llama.cpp's llama-quantize --allow-requantize), then scores each file with
# `kr-serve bench perplexity` (8-bit activation path, and the exact f32 path with
# KR_CPU_EXACT_MATMUL=1) and `llama-perplexity` on the same text, context and chunks.
# Usage: scripts/perplexity_every_type.sh LLAMA_BIN_DIR [MODEL.gguf] [OUT_DIR] [CHUNKS]
set -euo pipefail
BIN=${1:?directory with llama-quantize and llama-perplexity}
MODEL=${2:-../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${3:-reports/perplexity}
CHUNKS=${4:-8}
TEXT=docs/texts/genesis-1-15-kjv.txt
CTX=512
FILES=${FILES:-/tmp/kr-quant-files}
mkdir -p "$OUT" "$FILES"
for ty in Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_NL IQ4_XS; do
  f="$FILES/model-$ty.gguf"
  [ -f "$f" ] || "$BIN/llama-quantize" --allow-requantize "$MODEL" "$f" "$ty" > "$FILES/quantize-$ty.log" 2>&1
  ./target/release/kr-serve bench perplexity --model "$f" --text "$TEXT" --ctx $CTX --chunks $CHUNKS \
    --threads 2 --out "$OUT/kr-serve-$ty.json" 2> "$OUT/kr-serve-$ty.log"
  KR_CPU_EXACT_MATMUL=1 ./target/release/kr-serve bench perplexity --model "$f" --text "$TEXT" \
    --ctx $CTX --chunks $CHUNKS --threads 2 --out "$OUT/kr-serve-exact-$ty.json" 2> "$OUT/kr-serve-exact-$ty.log"
  "$BIN/llama-perplexity" -m "$f" -f "$TEXT" -c $CTX --chunks $CHUNKS -t 2 > "$OUT/llama-$ty.log" 2>&1
  python3 - "$OUT" "$ty" "$FILES/quantize-$ty.log" <<'PY'
import json, re, sys, os
from collections import Counter
out, ty, qlog = sys.argv[1], sys.argv[2], sys.argv[3]
kr = json.load(open(os.path.join(out, f"kr-serve-{ty}.json")))["perplexity"]
ex = json.load(open(os.path.join(out, f"kr-serve-exact-{ty}.json")))["perplexity"]
log = open(os.path.join(out, f"llama-{ty}.log")).read()
ll = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))
qtext = open(qlog).read() if os.path.exists(qlog) else ""
types = dict(Counter(re.findall(r"converting to (\w+)", qtext)))
print(f"{ty:7s} kr-serve int8 {kr:8.4f} ({100*(kr-ll)/ll:+.2f}%)  exact {ex:8.4f} ({100*(ex-ll)/ll:+.2f}%)  "
      f"llama.cpp {ll:8.4f}  tensor types {types}")
PY
done | tee "$OUT/summary.txt"
