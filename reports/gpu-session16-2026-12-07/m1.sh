#!/bin/bash
# Session 16 call 1: unpack the binaries (branch wip/decode-stages-and-windows and main 486479a),
# start llama.cpp's CUDA build and the 8B bf16 GGUF in the background, run every GPU test of the
# branch, then wait for the build.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
REPO=$(pwd)
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
mkdir -p /tmp/w /tmp/sm && cp .gpu/p/* /tmp/sm/
for f in .gpu/c/*.xz; do python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" $f /tmp/w/$(basename $f .xz); done
chmod +x /tmp/w/kr-* /tmp/w/*_test; ls -la /tmp/w
cd /tmp/w && tar xzf "$REPO"/.gpu/llama.cpp-*-trimmed.tgz -C /tmp/w && cd lc
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF > cmake.log 2>&1 || tail cmake.log
setsid nohup bash -c 'time cmake --build build -j15 --target llama-bench' > build.log 2>&1 < /dev/null &
setsid nohup bash -c "python3 $REPO/scripts/make_random_gguf.py /tmp/w/lc/gguf-py /tmp/w/vocab.gguf /tmp/w/8b-bf16.gguf llama-3.1-8b && touch /tmp/w/gguf.done" > /tmp/w/gguf.log 2>&1 < /dev/null &
cd "$REPO"
timeout 420 /tmp/w/gpu_test --ignored --test-threads 1 --nocapture > $OUT/gpu_tests.log 2>&1
echo "tests rc $?"
grep -E "^test |test result|panicked|FAILED|failed" $OUT/gpu_tests.log | head -40
tail -2 /tmp/w/gguf.log
for i in $(seq 1 60); do pgrep -f "cmake --build" > /dev/null || break; sleep 3; done
tail -4 /tmp/w/lc/build.log; ls -la /tmp/w/lc/build/bin/ 2>&1 | tail -3
