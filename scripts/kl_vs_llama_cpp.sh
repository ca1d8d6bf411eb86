#!/usr/bin/env bash
# Do kr-serve and llama.cpp compute the same quantised model? For one 256-aligned GGUF file
# re-quantised to every type kr-serve reads, llama-perplexity saves its next-token
# distributions (--kl-divergence-base) and `kr-serve bench perplexity --kl-divergence-base`
# measures KL(llama.cpp ‖ kr-serve) and top-token agreement on the same text, file and context.
# For scale, the same is done between the file and its Q8_0 re-quantisation (what quantising
# costs), so an engine difference can be read against a quantisation difference.
# Usage: scripts/kl_vs_llama_cpp.sh LLAMA_BIN_DIR MODEL.gguf OUT_DIR [CTX] [CHUNKS]
# (make MODEL with: STD=0.1 python3 scripts/make_random_gguf.py GGUF_PY VOCAB.gguf OUT tiny)
set -euo pipefail
BIN=${1:?directory with llama-quantize and llama-perplexity}
MODEL=${2:?a GGUF file whose rows are multiples of 256}
OUT=${3:?output directory}
CTX=${4:-128}
CHUNKS=${5:-4}
TEXT=docs/texts/genesis-1-15-kjv.txt
FILES=${FILES:-/tmp/kr-kl-files}
mkdir -p "$OUT" "$FILES"
kl() { # kr-serve on $1 against llama.cpp's base $2, report $3
  ./target/release/kr-serve bench perplexity --model "$1" --text "$TEXT" --ctx "$CTX" \
    --chunks "$CHUNKS" --threads 2 --kl-divergence-base "$2" --out "$3" 2> "$3.log"
}
base() { # llama.cpp's distributions for file $1 into $2
  "$BIN/llama-perplexity" -m "$1" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -t 2 \
    --kl-divergence-base "$2" > "$2.log" 2>&1
}
for ty in Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_NL IQ4_XS; do
  f="$FILES/model-$ty.gguf"
  [ -f "$f" ] || "$BIN/llama-quantize" --allow-requantize "$MODEL" "$f" "$ty" > "$FILES/quantize-$ty.log" 2>&1
  base "$f" "$FILES/base-$ty.bin"
  kl "$f" "$FILES/base-$ty.bin" "$OUT/kr-serve-$ty.json"
  KR_CPU_EXACT_MATMUL=1 kl "$f" "$FILES/base-$ty.bin" "$OUT/kr-serve-exact-$ty.json"
  # Scale: kr-serve on this file against llama.cpp on the Q8_0 file.
  if [ "$ty" != Q8_0 ] && [ -f "$FILES/base-Q8_0.bin" ]; then
    kl "$f" "$FILES/base-Q8_0.bin" "$OUT/kr-serve-$ty-vs-q8.json"
  fi
  [ "$ty" = Q8_0 ] || rm -f "$FILES/base-$ty.bin"
  python3 - "$OUT" "$ty" "$FILES/quantize-$ty.log" <<'PY'
import json, re, sys, os
from collections import Counter
out, ty, qlog = sys.argv[1], sys.argv[2], sys.argv[3]
def k(name):
    p = os.path.join(out, name)
    return json.load(open(p))["kl_divergence"] if os.path.exists(p) else None
a, e, q = k(f"kr-serve-{ty}.json"), k(f"kr-serve-exact-{ty}.json"), k(f"kr-serve-{ty}-vs-q8.json")
types = dict(Counter(re.findall(r"converting to (\w+)", open(qlog).read()))) if os.path.exists(qlog) else {}
s = lambda r: f"KL {r['mean_kl_divergence']:.2e} (max {r['max_kl_divergence']:.1e}), same top {100*r['same_top_token']:.1f}%"
line = f"| {ty} | {s(a)} | {s(e)} | " + (s(q) if q else "—") + f" | {types} |"
print(line)
PY
done | tee "$OUT/summary.md"
