#!/bin/bash
# Issue 17: the int8 GEMV with prefetch: the quantised GPU tests, then the random-weight Q4_K_M
# 8B mix with the int8 GEMV at every batch size up to 8 and with the float GEMV.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== quant tests"; (cd .gpu && timeout 200 ./gpu_test --ignored --test-threads 1 --nocapture quant > $OUT/quant_tests.log 2>&1); echo "rc $?"
grep -E "^test |test result|panicked" $OUT/quant_tests.log | head; grep -E "q4_k|q6_k|Q4K|Q6K" $OUT/quant_tests.log | grep -i bf16 | head -8
for i8 in 8 0; do
  f=$OUT/rw-q4km-i8-$i8.json
  KR_CUDA_QGEMV_INT8=$i8 timeout 150 .gpu/kr-serve bench engine --device cuda --random-weights --arch llama-3.1-8b:q4_k_m \
    --prompt-tokens 128 --gen-tokens 128 --batch-sizes 1,2,4,8 --repeat 1 --out $f > $f.log 2>&1
  echo "int8 up to $i8 tokens: rc $?"; python3 -c "
import json; r=json.load(open('$f'))['results']; b=r['decode_batch1']['graphs_on']
print('  batch1 %.1f tok/s (%.0f%% of bound) batched %s' % (b['tokens_per_second'], 100*b['fraction_of_bound'], [(x['batch'], round(x['tokens_per_second'])) for x in r['decode_batched']]))
print('  ', [(k['kernel'], round(k['total_us'])) for k in r['decode_batch1_kernels']['by_kernel'][:3]])" 2>&1 | tail -3
done
