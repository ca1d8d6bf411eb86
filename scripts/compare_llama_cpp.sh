#!/usr/bin/env bash
# Side-by-side CPU decode/prefill benchmark: kr-serve's `bench engine` and llama.cpp's
# `llama-bench` on the same GGUF file, same machine, one after the other.
# llama.cpp is built outside this repo (see docs/benchmarks.md); pass its llama-bench path.
# Usage: scripts/compare_llama_cpp.sh /path/to/llama-bench [MODEL.gguf] [OUT_DIR]
set -euo pipefail
LLAMA_BENCH=${1:?path to llama-bench}
MODEL=${2:-../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${3:-reports}
mkdir -p "$OUT"
cargo build --release -j2 -p kr-serve
for t in 1 2; do
  "$LLAMA_BENCH" -m "$MODEL" -t "$t" -p 512 -n 128 -r 3 -o json > "$OUT/llama-bench-t$t.json"
  RAYON_NUM_THREADS=$t ./target/release/kr-serve bench engine --model "$MODEL" \
    --prompt-tokens 8 --gen-tokens 128 --prefill-tokens 512 --batch-sizes 1,4,16 --repeat 3 \
    --out "$OUT/kr-serve-engine-t$t.json"
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
for t in (1, 2):
    ll = json.load(open(os.path.join(out, f"llama-bench-t{t}.json")))
    kr = json.load(open(os.path.join(out, f"kr-serve-engine-t{t}.json")))
    pp = next(r["avg_ts"] for r in ll if r["n_prompt"] > 0)
    tg = next(r["avg_ts"] for r in ll if r["n_gen"] > 0)
    d1 = next(d["decode_tokens_per_s"] for d in kr["decode"] if d["batch_size"] == 1)
    print(f"threads {t}: decode b1 kr-serve {d1:.1f} vs llama.cpp tg128 {tg:.1f} tok/s ({d1/tg:.0%}); "
          f"prefill kr-serve {kr['prefill']['tokens_per_s']:.1f} vs llama.cpp pp512 {pp:.1f} tok/s")
PY
