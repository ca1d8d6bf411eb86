#!/usr/bin/env python3
"""Checks kr-model's E4M3 codec (crates/kr-model/src/quant/fp8.rs) against PyTorch's
float8_e4m3fn: the value of every code, and the code PyTorch picks for 200,000 floats in
range (PyTorch rounds to nearest, ties to even; out of range it gives NaN where kr-model
saturates, so only |x| <= 448 is compared). kr-model's side comes from its `fp8_probe`
example. The CUDA kernels' encoder (kernels.cu's f_to_e4m3, bit arithmetic rather than a
search) is replayed in Python on the same floats and compared too.

Run from the repository root with a Python that has torch:
  /work/venv-tf/bin/python scripts/check_fp8_against_torch.py
"""
import json
import os
import struct
import subprocess
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def kr_codec(xs):
    """Codes and values from kr-model, through its `fp8_probe` example."""
    inp = json.dumps({"encode": xs})
    out = subprocess.run(["cargo", "run", "-q", "--release", "-p", "kr-model", "--example", "fp8_probe"],
                         input=inp, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return json.loads(out)


def device_encode(x):
    """The CUDA kernels' f_to_e4m3 (crates/kr-cuda/kernels/kernels.cu), its bit arithmetic
    replayed in Python on f32 values."""
    def bits(v):
        return struct.unpack("<I", struct.pack("<f", v))[0]
    x = struct.unpack("<f", struct.pack("<f", x))[0]
    if x != x:
        return 0x7F
    sign = (bits(x) >> 31) << 7
    a = min(abs(x), 448.0)
    if a < 0.015625:
        return sign | round(struct.unpack("<f", struct.pack("<f", a * 512.0))[0])  # half to even
    b = bits(a)
    r = (b + 0x7FFFF + ((b >> 20) & 1)) & 0xFFFFFFFF
    return sign | ((((r >> 23) - 120) << 3) & 0xFF) | ((r >> 20) & 7)


def main():
    gen = torch.Generator().manual_seed(7)
    xs = torch.cat([torch.randn(100_000, generator=gen) * 30,
                    (torch.rand(100_000, generator=gen) * 2 - 1) * 448,
                    torch.tensor([0.0, -0.0, 448.0, -448.0, 2 ** -9, 2 ** -10, 3 * 2 ** -11])])
    got = kr_codec(xs.tolist())
    codes = torch.arange(256, dtype=torch.uint8)
    want_values = codes.view(torch.float8_e4m3fn).to(torch.float32)
    bad_values = [c for c in range(256)
                  if not (torch.isnan(want_values[c]) and got["values"][c] is None)
                  and got["values"][c] != want_values[c].item()]
    want_codes = xs.to(torch.float8_e4m3fn).view(torch.uint8).tolist()
    bad_codes = [(x, g, w) for x, g, w in zip(xs.tolist(), got["codes"], want_codes)
                 if g != w and not (x == 0.0)]  # -0.0 / +0.0 may differ in sign bit only
    print(f"values: {256 - len(bad_values)}/256 equal; codes: {len(xs) - len(bad_codes)}/{len(xs)} equal")
    for x, g, w in bad_codes[:10]:
        print(f"  {x!r}: kr {g:#04x}, torch {w:#04x}")
    bad_device = [(x, device_encode(x), w) for x, w in zip(xs.tolist(), want_codes)
                  if device_encode(x) != w and x != 0.0]
    print(f"device encoder (replayed): {len(xs) - len(bad_device)}/{len(xs)} equal")
    sys.exit(1 if bad_values or bad_codes or bad_device else 0)


if __name__ == "__main__":
    main()
