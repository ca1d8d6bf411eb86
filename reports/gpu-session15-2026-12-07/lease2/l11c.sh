#!/bin/bash
# Call C: the new binary: 32k TTFT and batch 1/8 decode, bf16 KV then fp8 KV.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/sm/b /tmp/sm/; cp .gpu/kr-serve /tmp/w/kr-serve; source .gpu/s/summ.sh
run 32768 1,8 32768 new
EXTRA="--kv-cache-dtype fp8" run 32768 1,8 32768 new-fp8
