#!/bin/bash
# Session 15, call B: our batch-1 decode at 130,000 tokens of context (bf16 KV).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/sm/b /tmp/sm/; source .gpu/s/summ.sh
while [ ! -f /tmp/w/gguf.done ]; do sleep 2; done
TMO=420 run 130000 1 8192
