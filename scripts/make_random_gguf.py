# Random-weight Llama (or Qwen3-MoE) GGUF (bf16 matrices, f32 norms and router) with a real Llama-3 vocab copied from a
# llama.cpp vocab GGUF, so llama.cpp and kr-serve load the very same file.
# (../shared/peers/make_random_gguf.py, extended: Llama 3.1/3.2 presets write rope_freqs.weight
# as llama.cpp's converter does; STD=0.25 in the environment draws larger
# weights, so that a random model's next-token distributions are peaked and a wrong weight
# decoder changes perplexity visibly; the default 0.02 gives nearly uniform logits.)
import os
import sys, time, numpy as np
try:
    import torch
except ImportError:
    torch = None
gguf_py, vocab_path, out, preset = sys.argv[1:5]
sys.path.insert(0, gguf_py)
import gguf
P = {
 "llama-3.1-8b": dict(hidden=4096, layers=32, ffn=14336, heads=32, kv=8, tied=False, rope_factor=8.0),
 "llama-3.2-1b": dict(hidden=2048, layers=16, ffn=8192, heads=32, kv=8, tied=True, rope_factor=32.0),
 "tiny": dict(hidden=256, layers=2, ffn=512, heads=4, kv=2, tied=False),
 # Qwen3-30B-A3B's layer shapes (128 experts, 8 chosen, 768 rows each) cut to 24 of its 48
 # layers, about 31 GB (issue 20's MoE speed check); q/k norms, head_dim 128, untied.
 "qwen3-30b-a3b-24l": dict(hidden=2048, layers=24, ffn=6144, heads=32, kv=4, tied=False,
                           head_dim=128, experts=128, used=8, expert_ffn=768, arch="qwen3moe",
                           rope_base=1000000.0, eps=1e-6),
}[preset]
ARCH = P.get("arch", "llama")
r = gguf.GGUFReader(vocab_path)
w = gguf.GGUFWriter(out, ARCH)
vocab = None
for f in r.fields.values():
    if not f.name.startswith("tokenizer."):
        continue
    t = f.types[0]; sub = f.types[-1] if t == gguf.GGUFValueType.ARRAY else None
    v = f.contents()
    if f.name == "tokenizer.ggml.tokens": vocab = len(v)
    w.add_key_value(f.name, v, t, sub_type=sub)
h, hd = P["hidden"], P.get("head_dim", P["hidden"] // P["heads"])
q_rows = P["heads"] * hd
w.add_context_length(131072 if ARCH == "llama" else 40960); w.add_embedding_length(h)
w.add_block_count(P["layers"]); w.add_feed_forward_length(P["ffn"])
w.add_head_count(P["heads"]); w.add_head_count_kv(P["kv"])
w.add_rope_freq_base(P.get("rope_base", 500000.0)); w.add_layer_norm_rms_eps(P.get("eps", 1e-5))
w.add_rope_dimension_count(hd); w.add_vocab_size(vocab); w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
if "experts" in P:
    w.add_key_length(hd); w.add_value_length(hd); w.add_expert_count(P["experts"])
    w.add_expert_used_count(P["used"]); w.add_expert_feed_forward_length(P["expert_ffn"])
STD = float(os.environ.get("STD", "0.02"))
rng = np.random.default_rng(0)
if torch is not None and torch.cuda.is_available():
    g = torch.Generator(device="cuda").manual_seed(0)
    def bf16(rows, cols):
        x = (torch.randn(rows, cols, generator=g, device="cuda") * STD).to(torch.bfloat16)
        return x.view(torch.int16).cpu().numpy().view(np.uint16)
else:
    def bf16(rows, cols):
        x = rng.standard_normal((rows, cols), dtype=np.float32) * STD
        return (x.view(np.uint32) >> 16).astype(np.uint16)
def mat(name, rows, cols):
    w.add_tensor(name, bf16(rows, cols), raw_shape=(rows, cols), raw_dtype=gguf.GGMLQuantizationType.BF16)
def norm(name, n=None):
    w.add_tensor(name, np.ones(n or h, dtype=np.float32))
def experts(name, rows, cols):
    """Stacked expert matrices, GGUF dims [cols, rows, experts], one expert at a time."""
    e = P["experts"]
    data = np.stack([bf16(rows, cols) for _ in range(e)])
    w.add_tensor(name, data, raw_shape=(e, rows, cols), raw_dtype=gguf.GGMLQuantizationType.BF16)
def llama3_rope_factors(factor, head_dim, base=500000.0, low=1.0, high=4.0, old=8192):
    """The rope_freqs tensor llama.cpp's converter writes for Llama 3.1's rope scaling: one
    divisor per dimension pair (1 for fast dimensions, `factor` for slow ones, a ramp between)."""
    out = []
    for i in range(head_dim // 2):
        wavelen = 2 * np.pi * base ** (2 * i / head_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)
t0 = time.time()
# Llama 3.1 / 3.2 files carry their rope scaling as this tensor (what a 128k context needs).
if "rope_factor" in P:
    w.add_tensor("rope_freqs.weight", llama3_rope_factors(P["rope_factor"], hd))
mat("token_embd.weight", vocab, h)
for i in range(P["layers"]):
    b = f"blk.{i}."
    norm(b + "attn_norm.weight")
    mat(b + "attn_q.weight", q_rows, h); mat(b + "attn_k.weight", P["kv"] * hd, h)
    mat(b + "attn_v.weight", P["kv"] * hd, h); mat(b + "attn_output.weight", h, q_rows)
    norm(b + "ffn_norm.weight")
    if "experts" in P:
        norm(b + "attn_q_norm.weight", hd); norm(b + "attn_k_norm.weight", hd)
        w.add_tensor(b + "ffn_gate_inp.weight", rng.standard_normal((P["experts"], h), dtype=np.float32) * STD)
        experts(b + "ffn_gate_exps.weight", P["expert_ffn"], h)
        experts(b + "ffn_up_exps.weight", P["expert_ffn"], h)
        experts(b + "ffn_down_exps.weight", h, P["expert_ffn"])
        continue
    mat(b + "ffn_gate.weight", P["ffn"], h); mat(b + "ffn_up.weight", P["ffn"], h)
    mat(b + "ffn_down.weight", h, P["ffn"])
norm("output_norm.weight")
if not P["tied"]:
    mat("output.weight", vocab, h)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print(f"{out}: vocab {vocab}, {time.time()-t0:.1f} s")
