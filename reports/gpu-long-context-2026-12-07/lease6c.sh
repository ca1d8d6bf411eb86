#!/bin/bash
# Issue 18, call C: llama.cpp on the same GGUF (decode at depth, prompt processing), then the
# server check (32k request alone and beside short ones).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
B=/tmp/w/lc/build/bin/llama-bench
while [ ! -x $B ] || pgrep -f "cmake --build" > /dev/null; do sleep 3; done
tail -4 /tmp/w/lc/build.log
echo "== llama.cpp decode at depth"
timeout 300 $B -m /tmp/w/8b-bf16.gguf -ngl 99 -fa 1 -p 0 -n 64 -d 8192,32768,130000 -r 1 -o json > $OUT/llama-depth.json 2> $OUT/llama-depth.err
echo "rc $?"; python3 -c "
import json
for r in json.load(open('$OUT/llama-depth.json')): print(' depth', r.get('n_depth'), 'n_gen', r['n_gen'], 'n_prompt', r['n_prompt'], '%.1f tok/s' % r['avg_ts'])"
echo "== llama.cpp prompt processing"
timeout 150 $B -m /tmp/w/8b-bf16.gguf -ngl 99 -fa 1 -p 8192,32768 -n 0 -r 1 -o json > $OUT/llama-pp.json 2> $OUT/llama-pp.err
echo "rc $?"; python3 -c "
import json
for r in json.load(open('$OUT/llama-pp.json')): print(' pp', r['n_prompt'], '%.1f tok/s = %.3f s' % (r['avg_ts'], r['n_prompt']/r['avg_ts']))"
