//! A copy of a GGUF with another chat template, for the tests that serve hostile
//! templates. Included by kr-http's and kr-serve's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A copy of the GGUF at `src`, written to `out_path`, whose chat template is `template`. The metadata grows by a
/// multiple of 256 bytes (padding in a Jinja comment), so the tensor data stays aligned.
pub fn with_template(src: &Path, template: &str, out_path: &Path) -> PathBuf {
    let bytes = std::fs::read(src).expect("read the GGUF");
    let key = b"tokenizer.chat_template";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the GGUF has a chat template");
    let len_at = at + key.len() + 4; // after the key: u32 type (string), u64 length
    let old_len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().unwrap()) as usize;
    let mut t = format!("{template}{{#");
    while (t.len() + 2) % 256 != old_len % 256 {
        t.push(' ');
    }
    t.push_str("#}");
    let mut out = bytes[..len_at].to_vec();
    out.extend_from_slice(&(t.len() as u64).to_le_bytes());
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(&bytes[len_at + 8 + old_len..]);
    std::fs::write(out_path, out).expect("write the GGUF");
    out_path.to_path_buf()
}
