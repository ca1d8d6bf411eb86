#!/bin/bash
# Session 15, call A: start the 8B bf16 GGUF (rope_freqs, 131,072 context) in the background,
# keep SmolLM2's first part, then every GPU test (fp8 cache, decode_tiles refactor, review fixes).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
REPO=$(pwd)
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
mkdir -p /tmp/w /tmp/sm && cp .gpu/sm/a /tmp/sm/
cp .gpu/ggml-vocab-llama-bpe.gguf /tmp/w/
setsid nohup bash -c "python3 $REPO/scripts/make_random_gguf.py $REPO/.gpu/gguf-py /tmp/w/ggml-vocab-llama-bpe.gguf /tmp/w/8b-bf16.gguf llama-3.1-8b && touch /tmp/w/gguf.done" > /tmp/w/gguf.log 2>&1 < /dev/null &
cp .gpu/smollm2_test /tmp/w/
cd .gpu
timeout 420 ./gpu_test --ignored --test-threads 1 --nocapture > $OUT/gpu_tests.log 2>&1
echo "rc $?"
grep -E "^test |test result|panicked|fp8|128k decode|error" $OUT/gpu_tests.log | head -40
tail -2 /tmp/w/gguf.log
