#!/bin/bash
# Session 16 call 5: SmolLM2 (carried in five parts): f32 reference and fp8 KV greedy texts.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/p/* /tmp/sm/; cd /tmp/sm && cat 1 2 3 4 > SmolLM2-135M-Instruct.Q4_1.gguf && md5sum SmolLM2-135M-Instruct.Q4_1.gguf && cd - > /dev/null
mkdir -p /tmp/models/smollm2-135m-instruct-q4_1 && mv /tmp/sm/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/models/smollm2-135m-instruct-q4_1/
KR_TEST_MODELS=/tmp/models timeout 300 /tmp/w/smollm2_test --ignored --test-threads 1 --nocapture > $OUT/smollm2.log 2>&1
echo "rc $?"; grep -E "^test |test result|panicked|fp8|prompt|equal|logprob" $OUT/smollm2.log | head -40
