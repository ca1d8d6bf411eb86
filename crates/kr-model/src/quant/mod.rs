//! GGML tensor encodings and their dequantisation to f32, following the block layouts of
//! ggml (`ggml-quants.c`, and gguf-py's `quants.py` as the reference the tests compare with):
//! each block stores its scale(s) then packed integers.
//!
//! - [`blocks`]: the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL);
//! - [`kquants`]: the 256-element super-block types (Q2_K … Q6_K, IQ4_XS);
//! - [`mlx`]: MLX's affine 4- and 8-bit groups, interleaved into blocks at load;
//! - `avx2`: vector decoders of Q4_0, Q4_1 and Q8_0 (the CPU's hot types).
//!
//! Invariant: `dequantize` is given whole blocks (`src.len()` a multiple of `block_bytes`,
//! `dst.len()` the matching number of elements); callers slice rows on block boundaries.

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2;
mod blocks;
pub mod fp8;
mod kquants;
pub mod mlx;
#[cfg(test)]
mod tests;

use half::{bf16, f16};
pub use kquants::scale_min_k4;
pub use mlx::{MlxAffine, ScaleType};

/// The encodings kr-serve reads: GGUF's (with their GGML type ids) and MLX's affine groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ4NL,
    IQ4XS,
    /// MLX affine groups (safetensors checkpoints only; no GGML id).
    Mlx(MlxAffine),
}

/// Elements of a K-quant super-block.
pub const QK_K: usize = 256;

/// The 4-bit non-linear code book of IQ4_NL and IQ4_XS.
pub const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

impl GgmlType {
    /// Every supported type, in GGML id order.
    pub const ALL: [GgmlType; 15] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
        Self::IQ4NL,
        Self::IQ4XS,
        Self::BF16,
    ];

    /// GGML's id of this type (as stored in a GGUF tensor entry); MLX groups, which GGUF has
    /// not, get 1000 + bits.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::IQ4NL => 20,
            Self::IQ4XS => 23,
            Self::BF16 => 30,
            Self::Mlx(m) => 1000 + m.bits as u32,
        }
    }

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The names of every supported type, for error messages.
    pub fn supported_names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::IQ4NL => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K | Self::IQ4XS => QK_K,
            Self::Mlx(m) => m.group as usize,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 | Self::IQ4NL => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::IQ4XS => 136,
            Self::Mlx(m) => m.block_bytes(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::IQ4NL => "IQ4_NL",
            Self::IQ4XS => "IQ4_XS",
            Self::Mlx(m) if m.bits == 4 => "MLX 4-bit",
            Self::Mlx(_) => "MLX 8-bit",
        }
    }

    /// Byte offsets of a block's f16 scale (and min) fields: every value of the block is
    /// linear in them.
    pub fn scale_fields(self) -> &'static [usize] {
        match self {
            Self::F32 | Self::F16 | Self::BF16 | Self::Mlx(_) => &[],
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 | Self::IQ4NL | Self::IQ4XS => &[0],
            Self::Q4_1 | Self::Q5_1 | Self::Q4K | Self::Q5K => &[0, 2],
            Self::Q2K => &[80, 82],
            Self::Q3K => &[108],
            Self::Q6K => &[208],
        }
    }

    /// Whether values are stored as integers with block scales (not plain floats).
    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Bytes used by `n` elements (n a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }
}

/// The little-endian f16 at byte `i` of `b`, as f32 (block scales and offsets).
#[inline(always)]
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes whole blocks of `ty` from `src` into `dst`.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(ty.bytes_for(dst.len()), src.len());
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => avx2::dequantize(ty, src, dst),
        GgmlType::Mlx(m) => {
            for (b, d) in src
                .chunks_exact(m.block_bytes())
                .zip(dst.chunks_exact_mut(m.group as usize))
            {
                m.decode_block(b, d);
            }
        }
        _ => {
            let decode = block_decoder(ty);
            for (b, d) in src
                .chunks_exact(ty.block_bytes())
                .zip(dst.chunks_exact_mut(ty.block_elems()))
            {
                decode(b, d);
            }
        }
    }
}

/// The portable decoder of one block of a quantised type.
fn block_decoder(ty: GgmlType) -> fn(&[u8], &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => blocks::q4_0,
        GgmlType::Q4_1 => blocks::q4_1,
        GgmlType::Q5_0 => blocks::q5_0,
        GgmlType::Q5_1 => blocks::q5_1,
        GgmlType::Q8_0 => blocks::q8_0,
        GgmlType::IQ4NL => blocks::iq4_nl,
        GgmlType::Q2K => kquants::q2_k,
        GgmlType::Q3K => kquants::q3_k,
        GgmlType::Q4K => kquants::q4_k,
        GgmlType::Q5K => kquants::q5_k,
        GgmlType::Q6K => kquants::q6_k,
        GgmlType::IQ4XS => kquants::iq4_xs,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Mlx(_) => {
            unreachable!("{} has no GGML block decoder", ty.name())
        }
    }
}
