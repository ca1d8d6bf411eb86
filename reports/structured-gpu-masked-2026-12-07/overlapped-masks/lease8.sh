#!/bin/bash
# Issue 19 must-show 5 again: masks computed while the forward pass runs (8B bf16 GGUF written
# here, Llama 3 vocabulary with EOS).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 scripts/make_random_gguf.py .gpu/gguf-py .gpu/ggml-vocab-llama-bpe.gguf /tmp/8b-bf16.gguf llama-3.1-8b 2>&1 | tail -1
for run in 1 2; do
  echo "== run $run"
  timeout 200 .gpu/kr-serve bench engine --device cuda --model /tmp/8b-bf16.gguf \
    --prompt-tokens 32 --gen-tokens 256 --prefill-tokens 64 --batch-sizes 1,8 --repeat 3 \
    --json-schema docs/schemas/bench-records.json --out $OUT/structured-8b-run$run.json > $OUT/structured-8b-run$run.log 2>&1
  echo "rc $?"
  grep -iE "error|panic|schema|constrained|ratio" $OUT/structured-8b-run$run.log | head -12
done
