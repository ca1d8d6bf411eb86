//! FP8 E4M3 ("e4m3fn": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities,
//! 0x7F / 0xFF NaN, largest finite 448) and rows quantised to it with one f32 scale each: the
//! format of an fp8 KV cache, where every (token, kv head) row of keys or values is stored as
//! codes with `scale = amax / 448`.
//!
//! Invariants: `decode(encode(x)) == x` for every finite value `decode` can give;
//! encoding rounds to the nearest code, ties to the even code, and saturates to ±448 (so a
//! row's largest element, scaled to 448, is exact); NaN encodes as 0x7F.

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The value of an E4M3 code.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = (code >> 3) & 0x0f;
    let man = (code & 0x07) as f32;
    if exp == 0x0f && code & 0x07 == 0x07 {
        return f32::NAN;
    }
    let magnitude = if exp == 0 {
        man * (2f32).powi(-9) // subnormal: m / 8 * 2^(1 - 7)
    } else {
        (1.0 + man / 8.0) * (2f32).powi(exp as i32 - 7)
    };
    sign * magnitude
}

/// The E4M3 code nearest `x` (ties to even), saturating at ±448; NaN gives 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs().min(E4M3_MAX);
    // Candidates are the 127 non-negative finite codes, increasing with the code; find the
    // last one not above `a`, then round between it and the next.
    let (mut lo, mut hi) = (0u8, 0x7e_u8);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if e4m3_to_f32(mid) <= a {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let below = lo;
    if below == 0x7e || e4m3_to_f32(below) == a {
        return sign | below;
    }
    let (vb, va) = (e4m3_to_f32(below), e4m3_to_f32(below + 1));
    let up = match (a - vb).total_cmp(&(va - a)) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => below & 1 == 1, // tie: to the even code
    };
    sign | if up { below + 1 } else { below }
}

/// Quantises `row` into `codes` (same length) with one scale, `amax / 448` (1 for an all-zero
/// row), and returns the scale: element i is about `e4m3_to_f32(codes[i]) * scale`.
pub fn quantize_row(row: &[f32], codes: &mut [u8]) -> f32 {
    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
    for (c, &v) in codes.iter_mut().zip(row) {
        *c = f32_to_e4m3(v / scale);
    }
    scale
}

/// The values of a row quantised by [`quantize_row`].
pub fn dequantize_row(codes: &[u8], scale: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = e4m3_to_f32(c) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finite_codes() -> impl Iterator<Item = u8> {
        (0..=255u8).filter(|c| c & 0x7f != 0x7f)
    }

    #[test]
    fn every_finite_code_round_trips_and_the_range_is_e4m3fn() {
        for c in finite_codes() {
            let v = e4m3_to_f32(c);
            let back = f32_to_e4m3(v);
            // +0 and -0 are two codes of one value; every other code is its own value.
            assert!(back == c || v == 0.0, "code {c:#04x} -> {v} -> {back:#04x}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9), "smallest subnormal");
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6), "smallest normal");
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        let values: Vec<f32> = (0..0x7f).map(e4m3_to_f32).collect();
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "codes increase with value"
        );
    }

    #[test]
    fn encoding_rounds_to_nearest_ties_to_even_and_saturates() {
        for c in 0..0x7eu8 {
            let (a, b) = (e4m3_to_f32(c), e4m3_to_f32(c + 1));
            let mid = (a + b) / 2.0;
            let even = if c % 2 == 0 { c } else { c + 1 };
            assert_eq!(f32_to_e4m3(mid), even, "tie between {a} and {b}");
            assert_eq!(f32_to_e4m3(a + (b - a) * 0.25), c);
            assert_eq!(f32_to_e4m3(a + (b - a) * 0.75), c + 1);
            assert_eq!(f32_to_e4m3(-(a + (b - a) * 0.75)), 0x80 | (c + 1));
        }
        assert_eq!(f32_to_e4m3(1e6), 0x7e);
        assert_eq!(f32_to_e4m3(-500.0), 0xfe);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7e);
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
        assert_eq!(f32_to_e4m3(1e-9), 0x00);
    }

    #[test]
    fn rows_keep_their_largest_element_and_3_bits_of_the_rest() {
        let row: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
            .collect();
        let mut codes = vec![0u8; 128];
        let scale = quantize_row(&row, &mut codes);
        let mut back = vec![0f32; 128];
        dequantize_row(&codes, scale, &mut back);
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in row.iter().zip(&back) {
            // Normal codes: half a step is 2^-4 of the value; the subnormal floor is
            // 2^-10 of the scale.
            let bound = x.abs() / 16.0 + scale * 2f32.powi(-10);
            assert!((x - y).abs() <= bound * 1.0001, "{x} -> {y}");
            if x.abs() == amax {
                assert!(
                    (x - y).abs() <= amax * 1e-6,
                    "the largest element is kept: {x} {y}"
                );
            }
        }
        let zeros = [0f32; 8];
        let mut codes = [0xaau8; 8];
        assert_eq!(quantize_row(&zeros, &mut codes), 1.0);
        assert_eq!(codes, [0u8; 8]);
    }
}
