#!/bin/bash
# Issue 18, call B: our decode at 8k (batch 1 and 8), 32k and 130k context and TTFT, on the
# 8B bf16 GGUF written in call A.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
while [ ! -f /tmp/w/gguf.done ]; do sleep 2; done
summ() { python3 -c "
import json; r=json.load(open('$1'))['results']; b=r['decode_batch1']
print('  batch1 %.1f tok/s (%.0f%% of bound %.1f) | ttft %.3f s | batched %s | copy bw %.0f GB/s' % (b['graphs_on']['tokens_per_second'], 100*b['graphs_on'].get('fraction_of_bound',0), b['graphs_on'].get('bandwidth_bound_tokens_per_second',0), r['ttft_seconds']['median'], [(x.get('batch'), round(x['tokens_per_second']), round(100*x.get('fraction_of_bound',0))) for x in r.get('decode_batched',[])], r.get('measured_copy_bandwidth_gb_per_s',0)))" 2>&1; }
run() {  # depth batch-sizes prefill-tokens [extra-env]
  local f=$OUT/long-$1${4:+-$4}.json
  echo "== depth $1 batches $2 prefill $3 $4"
  env $4 timeout 240 .gpu/kr-serve bench engine --device cuda --model /tmp/w/8b-bf16.gguf \
    --prompt-tokens $1 --gen-tokens 64 --batch-sizes $2 --prefill-tokens $3 --repeat 1 --out $f > $f.log 2>&1
  echo "rc $?"; grep -iE "error|panic" $f.log | head -5; [ -f $f ] && summ $f
}
run 8192 1,8 8192
run 32768 1 32768
run 32768 1 2048 KR_CUDA_LONG_DECODE_SPLITS=32
run 130000 1 2048
