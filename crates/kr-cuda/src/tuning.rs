//! The CUDA backend's tuning switches: environment variables for comparison runs and
//! ablations, declared here in one table (name, default, allowed values, effect) and read
//! only through [`value`] / [`switched_off`]. `kr-serve config` lists them with the values
//! in force. The defaults are what the benchmarks in docs/benchmarks.md measured best.

/// One tuning switch.
pub struct Switch {
    pub name: &'static str,
    pub default: &'static str,
    pub allowed: &'static str,
    pub effect: &'static str,
}

/// Every switch the backend reads.
pub static SWITCHES: &[Switch] = &[
    Switch {
        name: "KR_CUDA_CACHE",
        default: "$XDG_CACHE_HOME/kr-serve/cuda (else ~/.cache/kr-serve/cuda)",
        allowed: "a directory",
        effect: "where compiled kernels are cached",
    },
    Switch {
        name: "KR_CUDA_MMA_GEMV",
        default: "2",
        allowed: "0 (off), 1, 2",
        effect: "fewest tokens a step has for the tensor-core GEMV",
    },
    Switch {
        name: "KR_CUDA_MMA_WARPS",
        default: "16",
        allowed: "4, 8, 16, 32",
        effect: "warps per block of the tensor-core GEMV",
    },
    Switch {
        name: "KR_CUDA_MMA_UNROLL",
        default: "4",
        allowed: "2, 4, 8",
        effect: "32-column blocks a warp loads before its mma",
    },
    Switch {
        name: "KR_CUDA_DEQUANT_CHUNK_MIB",
        default: "16",
        allowed: "1..=1024",
        effect: "rows of a quantised weight decoded per GEMM of more than 8 tokens (MiB)",
    },
    Switch {
        name: "KR_CUDA_FOLD_NORMS",
        default: "1",
        allowed: "0 (off), 1",
        effect: "RMSNorm folded into the next projection",
    },
    Switch {
        name: "KR_CUDA_DECODE_SPLITS",
        default: "16",
        allowed: "1..=16",
        effect: "most key splits of the decode attention",
    },
    Switch {
        name: "KR_CUDA_LONG_DECODE_SPLITS",
        default: "64",
        allowed: "1..=64",
        effect: "most key splits of the decode attention past 1,024 keys of context",
    },
    Switch {
        name: "KR_CUDA_LONG_DECODE_KEYS",
        default: "128",
        allowed: "32..=65536",
        effect: "fewest keys per split of the decode attention past 1,024 keys of context",
    },
    Switch {
        name: "KR_CUDA_QGEMV_INT8",
        default: "1",
        allowed: "0 (off) ..= 8",
        effect: "most tokens a step has for the Q4_K / Q6_K GEMV with int8 activations (bf16)",
    },
    Switch {
        name: "KR_CUDA_DECODE_TILES",
        default: "1",
        allowed: "0 (off), 1",
        effect: "tiled decode-attention kernel (head_dim 64 / 128)",
    },
    Switch {
        name: "KR_CUDA_DECODE_STAGES",
        default: "2",
        allowed: "2, 3",
        effect: "tile buffers of the tiled decode kernels (3: two tiles in flight, more shared memory a block)",
    },
    Switch {
        name: "KR_CUDA_PARTIAL_ROPE",
        default: "0",
        allowed: "0, 1",
        effect: "models with partial rotary embeddings (Phi-4-mini) on the GPU (1; not yet checked on a GPU) instead of the CPU",
    },
    Switch {
        name: "KR_CUDA_MOE_DEVICE",
        default: "0",
        allowed: "0, 1",
        effect: "Mixture-of-Experts blocks routed on the device (1; not yet run on a GPU) instead of on the host",
    },
    Switch {
        name: "KR_CUDA_DECODE_CLUSTER",
        default: "1",
        allowed: "0 (off), 1",
        effect: "decode splits merged inside a cluster (sm_90+)",
    },
    Switch {
        name: "KR_CUDA_PDL",
        default: "1",
        allowed: "0 (off), 1",
        effect: "programmatic dependent launch (sm_90+)",
    },
    Switch {
        name: "KR_CUDA_PDL_EARLY",
        default: "1",
        allowed: "0 (off), 1",
        effect: "early launch trigger in the kernels",
    },
    Switch {
        name: "KR_CUDA_GEMV_PRELOAD",
        default: "1",
        allowed: "0 (off), 1",
        effect: "GEMV weight loads before the launch wait",
    },
    Switch {
        name: "KR_CUDA_GEMV_HEAD",
        default: "8",
        allowed: "4, 8",
        effect: "weight vectors per lane loaded before the launch wait",
    },
    Switch {
        name: "KR_CUDA_SKIP_KERNELS",
        default: "",
        allowed: "kernel names, comma-separated",
        effect: "kernels not launched (timing ablations only: outputs are wrong)",
    },
];

/// The value of switch `name` in the environment, if set.
pub fn value(name: &str) -> Option<String> {
    debug_assert!(
        SWITCHES.iter().any(|s| s.name == name),
        "{name} is not declared in tuning::SWITCHES"
    );
    std::env::var(name).ok()
}

/// Whether the off-by-default switch `name` is set to 1.
pub fn switched_on(name: &str) -> bool {
    value(name).is_some_and(|v| v.trim() == "1")
}

/// Whether the on/off switch `name` is set to 0 (switches are on unless `=0`).
pub fn switched_off(name: &str) -> bool {
    value(name).is_some_and(|v| v.trim() == "0")
}
