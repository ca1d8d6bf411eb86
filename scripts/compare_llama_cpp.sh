#!/usr/bin/env bash
# Side-by-side CPU decode/prefill benchmark: kr-serve's `bench engine` and llama.cpp's
# `llama-bench` on the same GGUF files, same machine, alternating run by run (llama.cpp, then
# kr-serve, ROUNDS times per file and thread count), reporting medians.
# llama.cpp is built outside this repo (see docs/benchmarks.md); pass its llama-bench path.
# Usage: scripts/compare_llama_cpp.sh /path/to/llama-bench OUT_DIR MODEL.gguf [MODEL.gguf ...]
# Env: ROUNDS (3), THREADS ("1 2"), GEN (64 decode tokens), PREFILL (512).
set -euo pipefail
LLAMA_BENCH=${1:?path to llama-bench}
OUT=${2:?output directory}
shift 2
MODELS=("${@:-../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}")
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1 2}
GEN=${GEN:-64}
PREFILL=${PREFILL:-512}
mkdir -p "$OUT"
cargo build --release -j2 -p kr-serve
for model in "${MODELS[@]}"; do
  name=$(basename "$model" .gguf)
  for t in $THREADS; do
    for r in $(seq 1 "$ROUNDS"); do
      "$LLAMA_BENCH" -m "$model" -t "$t" -p "$PREFILL" -n "$GEN" -r 1 -o json \
        > "$OUT/llama-bench-$name-t$t-r$r.json"
      ./target/release/kr-serve bench engine --model "$model" --threads "$t" \
        --prompt-tokens 8 --gen-tokens "$GEN" --prefill-tokens "$PREFILL" --batch-sizes 1 \
        --repeat 1 --out "$OUT/kr-serve-$name-t$t-r$r.json" > /dev/null
    done
  done
done
python3 - "$OUT" "$ROUNDS" "$THREADS" "${MODELS[@]}" <<'PY'
import json, os, statistics, sys
out, rounds, threads, models = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
rows = []
for model in models:
    name = os.path.basename(model)[: -len(".gguf")]
    for t in threads:
        lp, lg, kp, kg = [], [], [], []
        for r in range(1, rounds + 1):
            ll = json.load(open(os.path.join(out, f"llama-bench-{name}-t{t}-r{r}.json")))
            kr = json.load(open(os.path.join(out, f"kr-serve-{name}-t{t}-r{r}.json")))
            lp.append(next(x["avg_ts"] for x in ll if x["n_prompt"] > 0))
            lg.append(next(x["avg_ts"] for x in ll if x["n_gen"] > 0))
            kp.append(kr["prefill"]["tokens_per_s"])
            kg.append(next(d["decode_tokens_per_s"] for d in kr["decode"] if d["batch_size"] == 1))
        m = statistics.median
        rows.append(dict(model=name, threads=int(t), rounds=rounds,
                         decode_kr=m(kg), decode_llama=m(lg), decode_ratio=m(kg) / m(lg),
                         prefill_kr=m(kp), prefill_llama=m(lp), prefill_ratio=m(kp) / m(lp),
                         samples=dict(decode_kr=kg, decode_llama=lg, prefill_kr=kp, prefill_llama=lp)))
json.dump(rows, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("| file | threads | decode kr-serve | llama.cpp | ratio | prefill kr-serve | llama.cpp | ratio |")
print("|---|---|---|---|---|---|---|---|")
for x in rows:
    print(f"| {x['model']} | {x['threads']} | {x['decode_kr']:.1f} | {x['decode_llama']:.1f} | "
          f"{x['decode_ratio']:.0%} | {x['prefill_kr']:.1f} | {x['prefill_llama']:.1f} | {x['prefill_ratio']:.0%} |")
PY
