#!/bin/bash
# Session 15, call C: 32k context, batch 1 and 8, bf16 KV then fp8 KV.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/sm/c /tmp/sm/; source .gpu/s/summ.sh
run 32768 1,8 8192
run 32768 1,8 8192 KR_CUDA_KV_FP8=1
