//! Prints kr-model's E4M3 codec for scripts/check_fp8_against_torch.py: reads
//! `{"encode": [floats]}` on stdin, writes `{"values": [the value of each of the 256 codes,
//! null for NaN], "codes": [the code of each float]}`.

use kr_model::quant::fp8::{e4m3_to_f32, f32_to_e4m3};
use std::io::Read;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let request: serde_json::Value = serde_json::from_str(&input)?;
    let floats = request["encode"]
        .as_array()
        .ok_or("expected {\"encode\": [...]}")?;
    let values: Vec<Option<f32>> = (0..=255u8)
        .map(|c| Some(e4m3_to_f32(c)).filter(|v| !v.is_nan()))
        .collect();
    let codes: Vec<u8> = floats
        .iter()
        .map(|v| f32_to_e4m3(v.as_f64().unwrap_or(f64::NAN) as f32))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "values": values, "codes": codes })
    );
    Ok(())
}
