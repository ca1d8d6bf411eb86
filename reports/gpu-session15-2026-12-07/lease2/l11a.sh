#!/bin/bash
# Session 15 lease 2, call A: 8B GGUF in the background; every GPU test (fp8 decode widened
# once per block; prefill mma with cp.async double buffering and ldmatrix; bf16 pack by cvt).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
REPO=$(pwd)
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
mkdir -p /tmp/w /tmp/sm && cp .gpu/smollm2_test /tmp/w/ && cp .gpu/ggml-vocab-llama-bpe.gguf /tmp/w/
setsid nohup bash -c "python3 $REPO/scripts/make_random_gguf.py $REPO/.gpu/gguf-py /tmp/w/ggml-vocab-llama-bpe.gguf /tmp/w/8b-bf16.gguf llama-3.1-8b && touch /tmp/w/gguf.done" > /tmp/w/gguf.log 2>&1 < /dev/null &
cd .gpu
cp sm/a /tmp/sm/ 2>/dev/null; timeout 300 ./gpu_test --ignored --test-threads 1 --nocapture attention kernels bf16_forward f32_forward > $OUT/gpu_tests.log 2>&1
echo "rc $?"
grep -E "test result|panicked|fp8 cache|FAILED|failed|prefill" $OUT/gpu_tests.log | head -30
