//! AVX2 decoders of the 32-element block types, the hot path of CPU decoding. They compute
//! `q * d + m` with one fused multiply-add, so values may differ from the portable decoders
//! in the last bit; every CPU code path uses the same decoder, so results stay consistent.

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
