#!/usr/bin/env python3
"""Quantised MLX checkpoints of the tiny Hugging Face models and MLX's own logits for them.

For each (model, bits, group size, dtype) below, runs `mlx_lm.convert -q` on
tests/reference/hf-tiny/<model>-f32 into tests/reference/mlx-tiny/<model>-q<bits>-g<group>/
and writes reference.json there: the hf-tiny input ids and the logits MLX computes at every
position (mlx_lm.load, CPU device) with the model's floats (scales, biases, norms) cast to
float32 (exact for bf16/f16 values), so MLX computes in f32 as kr-serve does.

mlx_lm reads rope scaling from `rope_scaling` / `rope_theta` (the transformers 4 keys), not
from transformers 5's `rope_parameters`; the converted config is rewritten to those keys, and
the script checks that MLX on the unquantised f32 model then matches transformers' logits.

Run on any machine (CPU): pip install "mlx[cpu]" mlx-lm; python3 scripts/make_mlx_fixtures.py
"""
import json
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import mlx_lm
from mlx_lm import load

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HF = os.path.join(ROOT, "tests", "reference", "hf-tiny")
OUT = os.path.join(ROOT, "tests", "reference", "mlx-tiny")
CHECKPOINTS = [
    ("llama", 4, 32, "bfloat16"),
    ("llama", 8, 64, "float16"),
    ("qwen2", 4, 64, "bfloat16"),
]

def rope_to_v4_keys(config_path: str) -> None:
    c = json.load(open(config_path))
    rp = c.pop("rope_parameters", None)
    if rp:
        c["rope_theta"] = rp.pop("rope_theta")
        if rp.get("rope_type", "default") != "default":
            c["rope_scaling"] = rp
        json.dump(c, open(config_path, "w"), indent=2)

def logits_f32(path: str, ids) -> mx.array:
    m, _ = load(path)
    m.set_dtype(mx.float32)
    return m(mx.array([ids]))[0].astype(mx.float32)

def check_mlx_matches_transformers(model: str, tmp: str) -> None:
    src = os.path.join(HF, f"{model}-f32")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    rope_to_v4_keys(os.path.join(tmp, "config.json"))
    r = json.load(open(os.path.join(src, "reference.json")))
    err = mx.abs(logits_f32(tmp, r["input_ids"]) - mx.array(r["logits"])).max().item()
    print(f"{model}-f32: MLX vs transformers max |logit diff| {err:.2e}")
    assert err < 1e-3, err
    shutil.rmtree(tmp)

def main() -> None:
    mx.set_default_device(mx.cpu)
    os.makedirs(OUT, exist_ok=True)
    for model in sorted({c[0] for c in CHECKPOINTS}):
        check_mlx_matches_transformers(model, os.path.join(OUT, "tmp-check"))
    for model, bits, group, dtype in CHECKPOINTS:
        src = os.path.join(HF, f"{model}-f32")
        dst = os.path.join(OUT, f"{model}-q{bits}-g{group}")
        shutil.rmtree(dst, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", src,
                        "--mlx-path", dst, "-q", "--q-bits", str(bits),
                        "--q-group-size", str(group), "--dtype", dtype], check=True)
        rope_to_v4_keys(os.path.join(dst, "config.json"))
        for extra in ("README.md",):
            if os.path.exists(os.path.join(dst, extra)):
                os.remove(os.path.join(dst, extra))
        ids = json.load(open(os.path.join(src, "reference.json")))["input_ids"]
        logits = logits_f32(dst, ids)
        ref = {"model": model, "bits": bits, "group_size": group, "dtype": dtype,
               "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
               "input_ids": ids, "logits": logits.tolist()}
        with open(os.path.join(dst, "reference.json"), "w") as f:
            json.dump(ref, f)
        print(dst, logits.shape)

if __name__ == "__main__":
    main()
