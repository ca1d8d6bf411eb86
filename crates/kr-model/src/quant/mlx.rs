//! MLX's affine quantisation (`mlx_lm.convert -q`): per group of `group` consecutive values of a
//! row, a scale `s` and a bias `b` in the checkpoint's float type, and `bits`-bit unsigned
//! integers packed little-endian into uint32 words (element `j` of a row in bits
//! `(j % (32 / bits)) · bits` of word `j / (32 / bits)`); the value is `s · q + b`.
//!
//! The checkpoint stores the integers, scales and biases as three tensors (`X.weight`,
//! `X.scales`, `X.biases`); kr-serve interleaves them into one block per group, so that the
//! backends see an encoding like GGUF's: `[s][b][group · bits / 8 bytes of integers]`.
//!
//! Invariant: bits is 4 or 8 and the group 32, 64 or 128 ([`MlxAffine::new`] checks).

use half::{bf16, f16};

/// The float type of the scales and biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleType {
    F16,
    BF16,
    F32,
}

impl ScaleType {
    pub fn size(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::F32 => 4,
        }
    }

    /// The value at byte `i` of `b`.
    #[inline(always)]
    pub fn read(self, b: &[u8], i: usize) -> f32 {
        match self {
            Self::F16 => f16::from_le_bytes([b[i], b[i + 1]]).to_f32(),
            Self::BF16 => bf16::from_le_bytes([b[i], b[i + 1]]).to_f32(),
            Self::F32 => f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]),
        }
    }
}

/// One MLX affine encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MlxAffine {
    pub bits: u8,
    pub group: u16,
    pub scale: ScaleType,
}

impl MlxAffine {
    /// The encoding of `bits` and `group`, or `None` where kr-serve has no decoder for it.
    pub fn new(bits: usize, group: usize, scale: ScaleType) -> Option<Self> {
        let ok = matches!(bits, 4 | 8) && matches!(group, 32 | 64 | 128);
        ok.then_some(Self {
            bits: bits as u8,
            group: group as u16,
            scale,
        })
    }

    /// Bytes of packed integers per group.
    pub fn packed_bytes(self) -> usize {
        self.group as usize * self.bits as usize / 8
    }

    /// Bytes of one interleaved block (one group).
    pub fn block_bytes(self) -> usize {
        2 * self.scale.size() + self.packed_bytes()
    }

    /// Decodes one block into `y` (`group` values).
    pub fn decode_block(self, b: &[u8], y: &mut [f32]) {
        let ss = self.scale.size();
        let (s, bias) = (self.scale.read(b, 0), self.scale.read(b, ss));
        let q = &b[2 * ss..];
        if self.bits == 8 {
            for (v, &x) in y.iter_mut().zip(q) {
                *v = s * x as f32 + bias;
            }
        } else {
            for (j, v) in y.iter_mut().enumerate() {
                let x = (q[j / 2] >> (4 * (j % 2))) & 0x0f;
                *v = s * x as f32 + bias;
            }
        }
    }

    /// Interleaves a checkpoint's `rows` rows of packed integers (`cols · bits / 8` bytes each),
    /// scales and biases (`cols / group` values each, `scale.size()` bytes a value) into blocks.
    pub fn interleave(
        self,
        packed: &[u8],
        scales: &[u8],
        biases: &[u8],
        rows: usize,
        cols: usize,
    ) -> Vec<u8> {
        let groups = rows * cols / self.group as usize;
        let (ss, pb) = (self.scale.size(), self.packed_bytes());
        let mut out = Vec::with_capacity(groups * self.block_bytes());
        for g in 0..groups {
            out.extend_from_slice(&scales[g * ss..(g + 1) * ss]);
            out.extend_from_slice(&biases[g * ss..(g + 1) * ss]);
            out.extend_from_slice(&packed[g * pb..(g + 1) * pb]);
        }
        out
    }
}
