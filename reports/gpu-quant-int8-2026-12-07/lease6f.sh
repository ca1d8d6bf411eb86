#!/bin/bash
# Issue 17: Q4_K_M from the same 8B bf16 file; llama.cpp vs ours (int8 GEMV on / off).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
Q=/tmp/w/lc/build/bin/llama-quantize
[ -f /tmp/w/8b-q4km.gguf ] || $Q /tmp/w/8b-bf16.gguf /tmp/w/8b-q4km.gguf Q4_K_M 16 > $OUT/quantize.log 2>&1
ls -la /tmp/w/8b-q4km.gguf
timeout 120 /tmp/w/lc/build/bin/llama-bench -m /tmp/w/8b-q4km.gguf -ngl 99 -fa 1 -p 0 -n 128 -r 3 -o json > $OUT/llama-q4km.json 2>/dev/null
python3 -c "
import json
for r in json.load(open('$OUT/llama-q4km.json')): print(' llama.cpp q4km n_gen', r['n_gen'], '%.1f tok/s' % r['avg_ts'])"
for i8 in 1 0; do
  KR_CUDA_QGEMV_INT8=$i8 timeout 150 .gpu/kr-serve bench engine --device cuda --model /tmp/w/8b-q4km.gguf \
    --prompt-tokens 128 --gen-tokens 128 --batch-sizes 1,8 --repeat 1 --out $OUT/q4km-i8$i8.json > $OUT/q4km-i8$i8.log 2>&1
  echo "int8 $i8 rc $?"; python3 -c "
import json; r=json.load(open('$OUT/q4km-i8$i8.json'))['results']; b=r['decode_batch1']['graphs_on']
print('  batch1 %.1f tok/s (%.0f%% of bound) batched %s' % (b['tokens_per_second'], 100*b['fraction_of_bound'], [(x['batch'], round(x['tokens_per_second'])) for x in r['decode_batched']]))" 2>&1 | tail -2
done
