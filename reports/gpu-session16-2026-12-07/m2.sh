#!/bin/bash
# Session 16 call 2: main (486479a) against the branch on the same GGUF, 32k context, batch 1 and 8,
# bf16 and fp8 KV, interleaved.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/p/* /tmp/sm/; source .gpu/s/summ.sh
while [ ! -f /tmp/w/gguf.done ]; do sleep 2; done
TMO=110
KR=/tmp/w/kr-main run 32768 1,8 8192 main
KR=/tmp/w/kr-br run 32768 1,8 8192 branch
KR=/tmp/w/kr-main EXTRA="--kv-cache-dtype fp8" run 32768 1,8 8192 main-fp8
KR=/tmp/w/kr-br EXTRA="--kv-cache-dtype fp8" run 32768 1,8 8192 branch-fp8
