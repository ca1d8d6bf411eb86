#!/bin/bash
# Session 16 call 3: llama.cpp on the same GGUF: decode at depth 8k/32k/130k and prompt processing.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
cp .gpu/p/* /tmp/sm/
B=/tmp/w/lc/build/bin/llama-bench
while [ ! -x $B ] || pgrep -f "cmake --build" > /dev/null; do sleep 3; done
echo "== llama.cpp decode at depth"
timeout 330 $B -m /tmp/w/8b-bf16.gguf -ngl 99 -fa 1 -p 0 -n 64 -d 8192,32768,130000 -r 1 -o json > $OUT/llama-depth.json 2> $OUT/llama-depth.err
echo "rc $?"; python3 -c "
import json
for r in json.load(open('$OUT/llama-depth.json')): print(' depth', r.get('n_depth'), 'n_gen', r['n_gen'], '%.1f tok/s' % r['avg_ts'])"
echo "== llama.cpp prompt processing"
timeout 150 $B -m /tmp/w/8b-bf16.gguf -ngl 99 -fa 1 -p 8192,32768 -n 0 -r 1 -o json > $OUT/llama-pp.json 2> $OUT/llama-pp.err
echo "rc $?"; python3 -c "
import json
for r in json.load(open('$OUT/llama-pp.json')): print(' pp', r['n_prompt'], '%.1f tok/s = %.3f s' % (r['avg_ts'], r['n_prompt']/r['avg_ts']))"
