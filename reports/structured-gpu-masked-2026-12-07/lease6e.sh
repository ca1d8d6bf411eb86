#!/bin/bash
# Issue 19 must-show 5: decode with a JSON schema vs unconstrained (8B bf16 GGUF from call A,
# Llama 3 vocabulary with EOS), masks now applied on the GPU.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
for run in 1 2; do
  echo "== run $run"
  timeout 200 .gpu/kr-serve bench engine --device cuda --model /tmp/w/8b-bf16.gguf \
    --prompt-tokens 32 --gen-tokens 256 --prefill-tokens 64 --batch-sizes 1,8 --repeat 3 \
    --json-schema docs/schemas/bench-records.json --out $OUT/structured-8b-run$run.json > $OUT/structured-8b-run$run.log 2>&1
  echo "rc $?"
  grep -iE "error|panic|schema|constrained|ratio" $OUT/structured-8b-run$run.log | head -12
done
