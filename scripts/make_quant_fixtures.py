#!/usr/bin/env python3
"""Writes crates/kr-model/tests/fixtures/quant/<TYPE>.bin: random blocks of every quantised
GGUF type kr-serve reads, followed by their values as gguf-py's reference dequantisation
(llama.cpp's `gguf.quants`) decodes them, as little-endian f32.

Usage: python3 scripts/make_quant_fixtures.py PATH/TO/lc/gguf-py
(../shared/peers/llama.cpp-*-trimmed.tgz unpacks to lc/; needs numpy.)

The block bytes are random except the f16 scale/min fields, which are set to finite values
in [-2, 2] (random bits would make NaN and infinity)."""
import os
import sys

import numpy as np

sys.path.insert(0, sys.argv[1])
from gguf import quants  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T  # noqa: E402

# Type -> byte offsets of its f16 scale (and min) fields within a block.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.IQ4_NL: [0], T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2],
    T.Q6_K: [208], T.IQ4_XS: [0],
}
BLOCKS = 8

def main() -> None:
    out_dir = os.path.join(os.path.dirname(__file__), "..", "crates", "kr-model", "tests",
                           "fixtures", "quant")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20261207)
    for qtype, fields in F16_FIELDS.items():
        _, type_size = GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(BLOCKS, type_size), dtype=np.uint8)
        for off in fields:
            scale = rng.uniform(-2, 2, size=BLOCKS).astype(np.float16)
            blocks[:, off:off + 2] = scale.view(np.uint8).reshape(BLOCKS, 2)
        values = quants.dequantize(blocks.reshape(-1), qtype).astype("<f4")
        with open(os.path.join(out_dir, f"{qtype.name}.bin"), "wb") as f:
            f.write(blocks.tobytes())
            f.write(values.tobytes())
        print(qtype.name, blocks.size, "bytes,", values.size, "values")

if __name__ == "__main__":
    main()
