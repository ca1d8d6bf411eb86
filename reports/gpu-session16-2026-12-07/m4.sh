#!/bin/bash
# Session 16 call 4: kr-serve ($KRB) at 8k (batch 1 and 8) and 130k (batch 1), bf16 KV.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/p/* /tmp/sm/; source .gpu/s/summ.sh
KR=/tmp/w/${KRB:-kr-br}
TMO=120 run 8192 1,8 8192 ${KRB:-kr-br}
TMO=240 run 130000 1 8192 ${KRB:-kr-br}
