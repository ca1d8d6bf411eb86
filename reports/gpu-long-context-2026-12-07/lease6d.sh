#!/bin/bash
# Issue 18, call D: the server check (a 32k request alone and beside 8 short streams).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
timeout 500 python3 scripts/long_context_serve_check.py --binary .gpu/kr-serve --model /tmp/w/8b-bf16.gguf \
  --device cuda --long 32768 --max-tokens 64 --short 8 --out $OUT/long-serve 2>&1 | tail -30
