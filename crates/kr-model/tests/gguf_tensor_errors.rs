//! GGUF files whose tensors cannot be read fail at open with a message naming the tensor: an
//! unsupported type (with its GGML name and the supported list), an element count that is not
//! whole blocks of the type, and quantised data cut short by the end of the file.

use kr_model::gguf::GgufFile;

/// A GGUF v3 file with no metadata and one tensor `name` of `dims` and GGML type `ty`,
/// followed by `data_bytes` bytes of data.
fn gguf_with(name: &str, dims: &[u64], ty: u32, data_bytes: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(0u64.to_le_bytes()); // metadata keys
    b.extend((name.len() as u64).to_le_bytes());
    b.extend(name.as_bytes());
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // offset in the data section
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(vec![0x11u8; data_bytes]);
    b
}

fn open_err(name: &str, bytes: Vec<u8>) -> String {
    let path = std::env::temp_dir().join(format!("kr-gguf-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, bytes).expect("write");
    let err = GgufFile::open(&path)
        .err()
        .expect("the file must not open")
        .to_string();
    let _ = std::fs::remove_file(&path);
    err
}

#[test]
fn an_unsupported_type_names_the_tensor_the_type_and_the_supported_ones() {
    let e = open_err("iq2", gguf_with("blk.0.ffn_up.weight", &[256, 4], 16, 4096));
    assert!(e.contains("'blk.0.ffn_up.weight'"), "{e}");
    assert!(e.contains("IQ2_XXS (id 16)"), "{e}");
    assert!(
        e.contains("Q4_K") && e.contains("IQ4_XS") && e.contains("llama-quantize"),
        "{e}"
    );
}

#[test]
fn a_wrong_block_size_names_the_tensor() {
    // 300 values are not whole Q4_K blocks of 256.
    let e = open_err(
        "q4k300",
        gguf_with("blk.3.attn_q.weight", &[300, 1], 12, 4096),
    );
    assert!(
        e.contains("'blk.3.attn_q.weight'") && e.contains("block size"),
        "{e}"
    );
}

#[test]
fn a_truncated_quantised_tensor_names_the_tensor() {
    // Two Q6_K rows of 256 need 420 bytes; the file ends after 300.
    let e = open_err("q6k", gguf_with("output.weight", &[256, 2], 14, 300));
    assert!(
        e.contains("'output.weight'") && e.contains("needs bytes"),
        "{e}"
    );
    // The same with every byte there opens.
    let path = std::env::temp_dir().join(format!("kr-gguf-{}-ok.gguf", std::process::id()));
    std::fs::write(&path, gguf_with("output.weight", &[256, 2], 14, 420)).expect("write");
    assert!(GgufFile::open(&path).is_ok());
    let _ = std::fs::remove_file(&path);
}
