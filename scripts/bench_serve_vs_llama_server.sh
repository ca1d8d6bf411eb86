#!/usr/bin/env bash
# `kr-serve bench serve` against kr-serve and llama.cpp's llama-server on the same GGUF
# file, same workload (the 50 questions through each server's chat template, greedy,
# ignore_eos, same max_tokens), same concurrency levels, one server after the other.
# llama-server is built outside this repo; pass its path (its shared libraries must sit
# beside it). Both get 2 CPU threads and 8 parallel sequences.
# Usage: scripts/bench_serve_vs_llama_server.sh /path/to/llama-server [MODEL.gguf] [OUT_DIR]
# Env: CONC (default 1,4,8), MAX_TOKENS (64), NUM_PROMPTS (0 = all 50), THREADS (2),
# LLAMA_ARGS (extra llama-server flags, e.g. "--poll 0" on a machine shared with other work:
# llama.cpp's threads spin-wait between operations by default, which collapses when they
# are descheduled).
set -euo pipefail
LLAMA_SERVER=${1:?path to llama-server}
MODEL=${2:-../shared/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${3:-reports/serve-vs-llama-server}
CONC=${CONC:-1,4,8}
MAX_TOKENS=${MAX_TOKENS:-64}
NUM_PROMPTS=${NUM_PROMPTS:-0}
THREADS=${THREADS:-2}
NAME=$(basename "$MODEL" .gguf)
KR=./target/release/kr-serve
mkdir -p "$OUT"
cargo build --release -j2 -p kr-serve

wait_ready() { # URL PID
  for _ in $(seq 1 600); do
    curl -sf "$1/health" > /dev/null 2>&1 && return 0
    kill -0 "$2" 2> /dev/null || { echo "server exited" >&2; return 1; }
    sleep 0.2
  done
  echo "server not ready" >&2; return 1
}

bench() { # URL LABEL
  "$KR" bench serve --url "$1" --model "$NAME" --label "$2" --concurrency "$CONC" \
    --max-tokens "$MAX_TOKENS" --num-prompts "$NUM_PROMPTS" --warmup 2 --seed 0 \
    --out "$OUT/$2.json"
}

RAYON_NUM_THREADS=$THREADS "$KR" serve --model "$MODEL" --port 18080 --max-running 8 &
PID=$!
trap 'kill $PID 2> /dev/null || true' EXIT
wait_ready http://127.0.0.1:18080 $PID
bench http://127.0.0.1:18080 kr-serve
kill $PID; wait $PID || true

LD_LIBRARY_PATH="$(dirname "$LLAMA_SERVER")" "$LLAMA_SERVER" -m "$MODEL" --port 18081 \
  -t "$THREADS" -tb "$THREADS" -np 8 -c 16384 --jinja --no-webui ${LLAMA_ARGS:-} > "$OUT/llama-server.log" 2>&1 &
PID=$!
wait_ready http://127.0.0.1:18081 $PID
bench http://127.0.0.1:18081 llama-server
kill $PID; wait $PID || true

"$KR" bench plot "$OUT/kr-serve.json" "$OUT/llama-server.json" --out-prefix "$OUT/kr-serve-vs-llama-server"
