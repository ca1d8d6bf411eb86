#!/bin/bash
# Issue 18, call A: start llama.cpp's CUDA build and the 8B bf16 GGUF (with rope_freqs) in the
# background, then the decode-attention GPU tests (new: 4k/32k/128k keys, long-context splits).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
REPO=$(pwd)
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
mkdir -p /tmp/w && cd /tmp/w
if [ ! -d lc ]; then
  tar xzf "$REPO"/.gpu/llama.cpp-*-trimmed.tgz -C /tmp/w
  cd lc
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF > cmake.log 2>&1
  setsid nohup bash -c 'time cmake --build build -j14 --target llama-bench llama-quantize' > build.log 2>&1 < /dev/null &
  cd ..
fi
cd "$REPO"
cp .gpu/ggml-vocab-llama-bpe.gguf /tmp/w/
setsid nohup bash -c "python3 $REPO/scripts/make_random_gguf.py /tmp/w/lc/gguf-py /tmp/w/ggml-vocab-llama-bpe.gguf /tmp/w/8b-bf16.gguf llama-3.1-8b && touch /tmp/w/gguf.done" > /tmp/w/gguf.log 2>&1 < /dev/null &
cd .gpu
echo "== decode attention tests"
timeout 400 ./gpu_test --ignored --test-threads 1 --nocapture decode_attention sampling quant mlx > $OUT/attn_tests.log 2>&1
echo "rc $?"
grep -E "^test |test result|panicked|128k decode|masked|error|GPU - CPU|linear error" $OUT/attn_tests.log | head -40
tail -2 /tmp/w/gguf.log; tail -2 /tmp/w/lc/build.log
