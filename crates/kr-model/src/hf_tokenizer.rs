//! The tokenizer side of a Hugging Face directory: `tokenizer.json`, special tokens from
//! `tokenizer_config.json` (BOS, EOS, `add_bos_token`), EOS ids from
//! `generation_config.json` / `config.json`, and the chat template (`chat_template` in
//! tokenizer_config, as a string or a list of named templates, or `chat_template.jinja`).

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::hf::missing;
use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// A special token's text: a plain string or an AddedToken object with `content`.
fn token_text(v: &Value) -> Option<&str> {
    v.as_str().or(v["content"].as_str())
}

/// `eos_token_id` as an int or a list of ints.
fn id_list(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|i| i as u32)
            .collect(),
        _ => vec![],
    }
}

/// The special-token strings (BOS, EOS) a chat template may reference.
pub fn special_tokens(tok_cfg: &Value) -> (String, String) {
    let s = |k: &str| token_text(&tok_cfg[k]).unwrap_or_default().to_string();
    (s("bos_token"), s("eos_token"))
}

/// `tokenizer.json` with BOS/EOS filled from the configs beside it.
pub fn tokenizer_from_dir(
    dir: &Path,
    tok_cfg: &Value,
    gen_cfg: &Value,
    model_cfg: &Value,
) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(missing(&path));
    }
    let mut tok = Tokenizer::from_tokenizer_json(&path)?;
    let (bos, eos) = special_tokens(tok_cfg);
    tok.bos_id = tok.token_to_id(&bos).or_else(|| {
        gen_cfg["bos_token_id"]
            .as_u64()
            .or(model_cfg["bos_token_id"].as_u64())
            .map(|i| i as u32)
    });
    let mut eos_ids = id_list(&gen_cfg["eos_token_id"]);
    if eos_ids.is_empty() {
        eos_ids = id_list(&model_cfg["eos_token_id"]);
    }
    if let Some(id) = tok.token_to_id(&eos) {
        if !eos_ids.contains(&id) {
            eos_ids.push(id);
        }
    }
    tok.eos_ids = eos_ids;
    tok.add_bos = match tok_cfg["add_bos_token"].as_bool() {
        Some(b) => b,
        None => !bos.is_empty() && post_processor_adds(&path, &bos),
    };
    if tok.add_bos && tok.bos_id.is_none() {
        tok.add_bos = false;
    }
    Ok(tok)
}

/// Whether tokenizer.json's post-processor inserts `bos` (Llama 3's TemplateProcessing).
fn post_processor_adds(path: &Path, bos: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let pp = &json["post_processor"];
    !pp.is_null() && pp.to_string().contains(&format!("\"{bos}\""))
}

/// The template source: tokenizer_config's `chat_template` (string, or the list entry
/// named "default") or `chat_template.jinja`.
fn template_source(dir: &Path, tok_cfg: &Value) -> Result<Option<String>> {
    match &tok_cfg["chat_template"] {
        Value::String(s) => return Ok(Some(s.clone())),
        Value::Array(list) => {
            let pick = list
                .iter()
                .find(|t| t["name"] == "default")
                .or(list.first());
            if let Some(s) = pick.and_then(|t| t["template"].as_str()) {
                return Ok(Some(s.to_string()));
            }
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::Io {
            path: jinja,
            source,
        }),
    }
}

/// The directory's chat template, if it has one.
pub fn chat_template_from_dir(dir: &Path, tok_cfg: &Value) -> Result<Option<ChatTemplate>> {
    let Some(src) = template_source(dir, tok_cfg)? else {
        return Ok(None);
    };
    let (bos, eos) = special_tokens(tok_cfg);
    ChatTemplate::new(&src, &bos, &eos)
        .map(Some)
        .map_err(|e| ModelError::Template(format!("{}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_form_template_picks_default() {
        let cfg = json!({"chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "plain"},
        ]});
        let src = template_source(Path::new("/nonexistent"), &cfg).unwrap();
        assert_eq!(src.as_deref(), Some("plain"));
    }

    #[test]
    fn eos_ids_accept_int_or_list_and_tokens_accept_objects() {
        assert_eq!(id_list(&json!(7)), vec![7]);
        assert_eq!(id_list(&json!([7, 9])), vec![7, 9]);
        let cfg = json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>"});
        assert_eq!(
            special_tokens(&cfg),
            ("<s>".to_string(), "</s>".to_string())
        );
    }
}
