#!/usr/bin/env python3
"""Compiles kr-cuda's kernels with NVRTC exactly as the binary does at run time (the same
source files in the same order, C++17, compute_90, the default -D switches) on a machine
without a GPU, and checks that every quantised-weight kernel the Rust side launches
(`QUANT_KERNELS` in crates/kr-cuda/src/backend/quant.rs) is in the PTX for f32 and bf16.

Needs libnvrtc: `pip install nvidia-cuda-nvrtc-cu12` (PyPI) or a CUDA toolkit; pass the
library path as the first argument, else the pip package's is used. Exit 1 on a compile
error or a missing kernel, with the compiler's log."""
import ctypes
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KERNELS = os.path.join(ROOT, "crates", "kr-cuda", "kernels")
FILES = ["kernels.cu", "attention.cu", "decode_attention.cu", "decode_tiles.cu",
         "gemv_mma.cu", "sample.cu", "quant.cu", "moe.cu"]
OPTIONS = [b"--gpu-architecture=compute_90", b"-std=c++17", b"-DKR_PDL_EARLY=1",
           b"-DKR_GEMV_PRELOAD=1", b"-DGM_WARPS=16", b"-DGM_UNROLL=4", b"-DDT_STAGES=2"]

def nvrtc_path() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    import nvidia.cuda_nvrtc as pkg
    found = glob.glob(os.path.join(list(pkg.__path__)[0], "lib", "libnvrtc.so*"))
    return sorted(p for p in found if "builtins" not in p and ".alt." not in p)[0]

def main() -> int:
    device_rs = open(os.path.join(ROOT, "crates", "kr-cuda", "src", "device.rs")).read()
    order = re.findall(r'include_str!\("\.\./kernels/(\w+\.cu)"\)', device_rs)
    assert order == FILES, f"device.rs concatenates {order}, this script {FILES}"
    lib = ctypes.CDLL(nvrtc_path())
    src = "".join(open(os.path.join(KERNELS, f)).read() for f in FILES).encode()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * len(OPTIONS))(*OPTIONS)
    rc = lib.nvrtcCompileProgram(prog, len(OPTIONS), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        print("NVRTC failed:\n" + log.value.decode())
        return 1
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    entries = set(re.findall(r"\.entry (\w+)\(", ptx.value.decode()))
    quant_rs = open(os.path.join(ROOT, "crates", "kr-cuda", "src", "backend", "quant.rs")).read()
    table = quant_rs[quant_rs.index("pub const QUANT_KERNELS"):]
    table = table[:table.index("\n];")]
    wanted = [f"{n}_{s}" for n in re.findall(r'"(\w+)"', table) for s in ("f32", "bf16")]
    missing = [n for n in wanted if n not in entries]
    if missing:
        print("kernels the Rust side launches but the PTX lacks:", missing)
        return 1
    print(f"NVRTC compiled {len(entries)} kernels ({len(wanted)} quantised-weight kernels checked)"
          + (f"; log: {log.value.decode().strip()}" if log.value.strip() else ""))
    return 0

if __name__ == "__main__":
    sys.exit(main())
