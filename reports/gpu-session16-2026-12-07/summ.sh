summ() { python3 -c "
import json; R=json.load(open('$1')); r=R['results']; b=r['decode_batch1']
print('  batch1 %.1f tok/s (%.0f%% of bound %.1f) | ttft %.3f s | batched %s | copy bw %.0f GB/s | kv B/tok %s' % (b['graphs_on']['tokens_per_second'], 100*b['graphs_on'].get('fraction_of_bound',0), b['graphs_on'].get('bandwidth_bound_tokens_per_second',0), r['ttft_seconds']['median'], [(x.get('batch'), round(x['tokens_per_second'],1), round(100*x.get('fraction_of_bound',0),1)) for x in r.get('decode_batched',[])], r.get('measured_copy_bandwidth_gb_per_s',0), r.get('kv_cache_bytes_per_token')))
print('  ', [(k['kernel'], round(k['total_us'])) for k in r['decode_batch1_kernels']['by_kernel'][:4]])" 2>&1; }
run() {  # depth batch-sizes prefill-tokens [label]; $EXTRA: more bench flags
  local f=$OUT/long-$1${4:+-$4}.json
  echo "== depth $1 batches $2 prefill $3 $4"
  timeout ${TMO:-300} ${KR:-/tmp/w/kr-serve} bench engine $EXTRA --device cuda --model /tmp/w/8b-bf16.gguf \
    --prompt-tokens $1 --gen-tokens 64 --batch-sizes $2 --prefill-tokens $3 --repeat 1 --out $f > $f.log 2>&1
  echo "rc $?"; grep -iE "error|panic" $f.log | head -5; [ -f $f ] && summ $f
}
