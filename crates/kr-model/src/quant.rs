//! GGML tensor encodings and their dequantisation to f32, following the block layouts of
//! ggml (`ggml-quants.c`): each block stores its scale(s) then packed integers.
//!
//! Invariant: `dequantize` is given whole blocks (`src.len()` a multiple of `block_bytes`,
//! `dst.len()` the matching number of elements); callers slice rows on block boundaries.

use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

const QK_K: usize = 256;

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q6K => "Q6_K",
        }
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
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        GgmlType::Q4_0 => each_block(ty, src, dst, dequant_q4_0),
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        GgmlType::Q4_1 => each_block(ty, src, dst, dequant_q4_1),
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        GgmlType::Q8_0 => each_block(ty, src, dst, dequant_q8_0),
        GgmlType::Q4K => each_block(ty, src, dst, dequant_q4_k),
        GgmlType::Q6K => each_block(ty, src, dst, dequant_q6_k),
    }
}

#[inline(always)]
fn each_block(ty: GgmlType, src: &[u8], dst: &mut [f32], f: impl Fn(&[u8], &mut [f32])) {
    for (b, d) in src
        .chunks_exact(ty.block_bytes())
        .zip(dst.chunks_exact_mut(ty.block_elems()))
    {
        f(b, d);
    }
}

#[inline(always)]
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

#[inline(always)]
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0f) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

#[inline(always)]
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..34]) {
        *v = q as i8 as f32 * d;
    }
}

/// AVX2 decoders of the 32-element block types, the hot path of CPU decoding. They compute
/// `q * d + m` with one fused multiply-add, so values may differ from the portable decoders
/// in the last bit; every CPU code path uses the same decoder, so results stay consistent.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use super::{f16_at, GgmlType};
    use std::arch::x86_64::*;

    /// Converts 8 bytes (zero- or sign-extended) to 8 floats and stores `q * d + m`.
    #[inline(always)]
    unsafe fn store8(q: __m256i, d: __m256, m: __m256, out: *mut f32) {
        _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), d, m));
    }

    /// 16 packed bytes of nibbles: low nibbles are elements 0..16, high nibbles 16..32.
    #[inline(always)]
    unsafe fn nibbles(qs: *const u8, d: __m256, m: __m256, y: *mut f32) {
        let bytes = _mm_loadu_si128(qs as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        store8(_mm256_cvtepu8_epi32(lo), d, m, y);
        store8(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)), d, m, y.add(8));
        store8(_mm256_cvtepu8_epi32(hi), d, m, y.add(16));
        store8(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)), d, m, y.add(24));
    }

    pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
        let bb = ty.block_bytes();
        assert!(src.len() / bb * 32 <= dst.len(), "destination too short");
        for (i, b) in src.chunks_exact(bb).enumerate() {
            let d = f16_at(b, 0);
            // SAFETY: AVX2/FMA enabled at compile time; each block reads `bb` bytes of `b`
            // and writes 32 floats at `32 * i`, inside `dst` by the assertion above.
            unsafe {
                let y = dst.as_mut_ptr().add(32 * i);
                match ty {
                    GgmlType::Q4_0 => nibbles(
                        b.as_ptr().add(2),
                        _mm256_set1_ps(d),
                        _mm256_set1_ps(-8.0 * d),
                        y,
                    ),
                    GgmlType::Q4_1 => nibbles(
                        b.as_ptr().add(4),
                        _mm256_set1_ps(d),
                        _mm256_set1_ps(f16_at(b, 2)),
                        y,
                    ),
                    _ => {
                        let (dv, zero) = (_mm256_set1_ps(d), _mm256_setzero_ps());
                        for k in 0..4 {
                            let q = _mm_loadl_epi64(b.as_ptr().add(2 + 8 * k) as *const __m128i);
                            store8(_mm256_cvtepi8_epi32(q), dv, zero, y.add(8 * k));
                        }
                    }
                }
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[inline(always)]
fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, out)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

#[inline(always)]
fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let (ql_all, rest) = b.split_at(128);
    let (qh_all, rest) = rest.split_at(64);
    let (sc_all, d) = rest.split_at(16);
    let d = f16_at(d, 0);
    for half in 0..2 {
        let ql = &ql_all[64 * half..];
        let qh = &qh_all[32 * half..];
        let sc = &sc_all[8 * half..];
        let out = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8 as f32) * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_1_and_q8_0_blocks_decode_by_hand() {
        let mut b = Vec::new();
        b.extend(f16b(0.5));
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y);
        assert_eq!(y[3], 3.0 * 0.5 - 1.0);
        assert_eq!(y[16 + 3], 12.0 * 0.5 - 1.0);

        let mut b = Vec::new();
        b.extend(f16b(0.25));
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        dequantize(GgmlType::Q8_0, &b, &mut y);
        assert_eq!(y[0], -4.0);
        assert_eq!(y[31], 15.0 * 0.25);
    }

    #[test]
    fn q4_0_is_centred_on_eight() {
        let mut b = f16b(2.0).to_vec();
        b.extend([0x8f; 16]);
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y);
        assert_eq!(y[0], 14.0);
        assert_eq!(y[16], 0.0);
    }

    #[test]
    fn k_quants_decode_uniform_blocks() {
        // Q4_K: d = 1, dmin = 0, every 6-bit scale = 1, every nibble = 5 -> all values 5.
        let mut b = f16b(1.0).to_vec();
        b.extend(f16b(0.0));
        b.extend([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]);
        b.extend([0x55; 128]);
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q4K, &b, &mut y);
        assert!(y.iter().all(|&v| v == 5.0), "{:?}", &y[..8]);
        // Q6_K: ql nibbles 1, qh 0 -> q = 1 - 32 = -31; scales 2, d = 0.5 -> -31.
        let mut b = vec![0x11u8; 128];
        b.extend([0u8; 64]);
        b.extend([2u8; 16]);
        b.extend(f16b(0.5));
        dequantize(GgmlType::Q6K, &b, &mut y);
        assert!(y.iter().all(|&v| v == -31.0), "{:?}", &y[..8]);
    }
}
