//! Hand-made blocks with known values, and every type against gguf-py's reference
//! dequantisation (`tests/fixtures/quant/`, written by `scripts/make_quant_fixtures.py`).

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

/// The fixture of `ty`: its blocks and gguf-py's values for them.
fn fixture(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant");
    let path = format!("{dir}/{}.bin", ty.name());
    let all = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let per_block = ty.block_bytes() + 4 * ty.block_elems();
    assert_eq!(all.len() % per_block, 0, "{path}: not whole blocks");
    let split = all.len() / per_block * ty.block_bytes();
    let values = all[split..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (all[..split].to_vec(), values)
}

/// Every quantised type decodes as gguf-py does. The products are of small integers and f16
/// scales, exact in f32, so the only difference allowed is one rounding of a sum (the AVX2
/// decoders fuse `q·d + m`): 1e-6 relative.
#[test]
fn every_type_matches_the_reference_dequantisation() {
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
        let (blocks, want) = fixture(ty);
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{}: element {i}: got {g}, gguf-py {w}",
                ty.name()
            );
        }
    }
}

#[test]
fn type_ids_round_trip_and_unknown_ids_are_rejected() {
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
    }
    assert_eq!(GgmlType::from_id(15), None, "Q8_K is not a file type");
    assert!(GgmlType::supported_names().contains("IQ4_XS"));
}
