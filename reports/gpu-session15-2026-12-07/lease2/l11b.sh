#!/bin/bash
# Call B: the previous binary (1360912: old prefill kernel): TTFT at 32k, decode at 32k.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/kr-serve-old /tmp/w/kr-serve-old; source .gpu/s/summ.sh
while [ ! -f /tmp/w/gguf.done ]; do sleep 2; done
KR=/tmp/w/kr-serve-old run 32768 1 32768 old
