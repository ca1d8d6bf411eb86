//! Constrained decoding: a request's output held to a JSON schema, any JSON object, a regular
//! expression, a Lark grammar or a list of choices, through llguidance (the grammar engine
//! llama.cpp and vLLM use, chosen for its speed — tens of microseconds per token mask on a
//! 128k vocabulary — and its JSON-schema coverage, with errors that name the construct).
//!
//! [`GrammarCompiler`] is built once per model (the vocabulary as byte strings, special tokens
//! marked so no grammar admits them); [`GrammarCompiler::compile`] checks a request's
//! [`Constraint`] when it is validated, so a schema the engine cannot compile is a 400; the
//! engine starts a [`Grammar`] per request from it, which on a GPU computes each next-token
//! mask on rayon's pool as soon as the previous token is accepted (overlapping the forward
//! pass) and on the CPU when the sampler asks.
//!
//! Invariant: a [`Grammar`] only ever admits tokens its matcher allows; when the grammar is
//! complete it admits only end-of-sequence, so the request ends there.

use std::sync::Arc;

use crate::error::{EngineError, Result};
use kr_model::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{TokRxInfo, TokTrie, TokenizerEnv};

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintKind {
    /// A JSON schema (OpenAI `json_schema`, Ollama `format: {schema}`).
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI `json_object`, Ollama `format: "json"`).
    JsonObject,
    /// A regular expression (Rust `regex` syntax, no look-around).
    Regex(String),
    /// A Lark grammar (llguidance's dialect; `start` is the start rule).
    Lark(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

/// A constraint and the request field it came from (named in errors).
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub kind: ConstraintKind,
    pub field: &'static str,
}

impl Constraint {
    pub fn new(field: &'static str, kind: ConstraintKind) -> Self {
        Self { kind, field }
    }

    fn top_level(&self) -> std::result::Result<TopLevelGrammar, String> {
        Ok(match &self.kind {
            ConstraintKind::JsonSchema(s) => {
                TopLevelGrammar::from_json_schema(with_schema_defaults(s))
            }
            ConstraintKind::JsonObject => TopLevelGrammar::from_json_schema(with_schema_defaults(
                &serde_json::json!({"type": "object"}),
            )),
            ConstraintKind::Regex(r) => TopLevelGrammar::from_regex(r),
            ConstraintKind::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            ConstraintKind::Choice(c) => {
                if c.is_empty() {
                    return Err("the list of choices is empty".into());
                }
                let alts: Vec<String> = c
                    .iter()
                    .map(|s| serde_json::to_string(s).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
        })
    }
}

/// Whitespace JSON output may put between tokens, unless the schema sets its own
/// (`x-guidance`): nothing, one space, or a newline and up to 20 spaces or tabs of indentation
/// (llama.cpp's JSON grammar rule). Unbounded whitespace, the engine's default, lets a small
/// model fill `max_tokens` with newlines instead of closing the object.
const JSON_WHITESPACE: &str = r"(?:[ ]|\n[ \t]{0,20})?";

/// A schema with the server's defaults: closed objects ([`close_objects`]) and bounded
/// whitespace, unless it sets its own (`x-guidance`).
pub fn with_schema_defaults(schema: &serde_json::Value) -> serde_json::Value {
    let mut s = schema.clone();
    close_objects(&mut s);
    if let Some(obj) = s.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_pattern": JSON_WHITESPACE}));
    }
    s
}

/// Objects that list `properties` and do not say `additionalProperties` get
/// `additionalProperties: false`, at every depth: the listed properties only, as llama.cpp's
/// (Ollama's) and vLLM's grammars read a schema. JSON Schema itself would allow any other
/// property, which lets a model add properties until `max_tokens`.
fn close_objects(v: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(obj) = v else { return };
    if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    // Only into subschemas: never into `const`, `enum`, `default` or `examples` data.
    const ONE: [&str; 10] = [
        "items",
        "additionalProperties",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
    ];
    const MAPS: [&str; 5] = [
        "properties",
        "$defs",
        "definitions",
        "patternProperties",
        "dependentSchemas",
    ];
    const LISTS: [&str; 4] = ["anyOf", "oneOf", "allOf", "prefixItems"];
    for (key, sub) in obj.iter_mut() {
        match sub {
            Value::Object(m) if MAPS.contains(&key.as_str()) => {
                m.values_mut().for_each(close_objects)
            }
            Value::Array(a) if LISTS.contains(&key.as_str()) || key == "items" => {
                a.iter_mut().for_each(close_objects)
            }
            _ if ONE.contains(&key.as_str()) => close_objects(sub),
            _ => {}
        }
    }
}

/// The model's vocabulary as llguidance sees it.
struct TokEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(s)
    }
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Compiles constraints for one model.
pub struct GrammarCompiler {
    factory: ParserFactory,
    eos: Vec<u32>,
}

impl GrammarCompiler {
    /// Builds the vocabulary trie: `width` entries (the logits row; ids past the tokenizer are
    /// empty and never allowed), special tokens marked with llguidance's 0xFF prefix.
    pub fn new(tok: &Tokenizer, width: usize) -> Result<Self> {
        let eos: Vec<u32> = tok
            .eos_ids
            .iter()
            .copied()
            .filter(|&e| (e as usize) < width)
            .collect();
        let Some(&first_eos) = eos.first() else {
            return Err(EngineError::Config(
                "constrained output needs an end-of-sequence token and this model has none".into(),
            ));
        };
        let words: Vec<Vec<u8>> = (0..width as u32)
            .map(|id| match tok.token_bytes(id) {
                Some((b, true)) => [&[TokTrie::SPECIAL_TOKEN_MARKER][..], &b].concat(),
                Some((b, false)) => b,
                None => Vec::new(),
            })
            .collect();
        let info = TokRxInfo::new(width as u32, first_eos);
        let env = TokEnv {
            trie: TokTrie::from(&info, &words).with_eos_tokens(&eos),
        };
        let env: toktrie::TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Config(format!("grammar engine: {e}")))?;
        factory.quiet();
        factory.limits_mut().verbose_errors = false;
        Ok(Self { factory, eos })
    }

    /// Compiles `c`, or an error naming its field and what the engine could not compile.
    pub fn compile(&self, c: &Constraint) -> Result<CompiledGrammar> {
        let bad = |message: String| EngineError::Grammar {
            field: c.field,
            message,
        };
        let top = c.top_level().map_err(bad)?;
        let matcher = Matcher::new(self.factory.create_parser(top));
        if let Some(e) = matcher.get_error() {
            return Err(bad(e));
        }
        Ok(CompiledGrammar {
            matcher: Arc::new(matcher),
            eos: self.eos.clone(),
        })
    }
}

/// A compiled constraint, ready to start for a request (shared, never advanced itself).
#[derive(Clone)]
pub struct CompiledGrammar {
    matcher: Arc<Matcher>,
    eos: Vec<u32>,
}

impl std::fmt::Debug for CompiledGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledGrammar")
    }
}

impl CompiledGrammar {
    /// A fresh matcher for one request; `ahead`: compute each next mask in the background
    /// as soon as a token is accepted (worth it where the host idles during the forward
    /// pass, on a GPU; on the CPU the pass uses every core and the hand-off only costs).
    pub fn start(&self, ahead: bool) -> Grammar {
        Grammar::new(self.matcher.deep_clone(), self.eos.clone(), ahead)
    }
}

/// The next token's mask: `None` allows only end-of-sequence (the grammar is complete, or
/// failed).
type NextMask = Option<toktrie::SimpleVob>;

/// One request's position in its grammar. With `ahead`, after each accepted token the next
/// mask is computed on rayon's pool while the forward pass runs and [`Grammar::mask`] waits
/// for it only if it is not done yet; without, [`Grammar::mask`] computes it.
pub struct Grammar {
    state: MatchState,
    eos: Vec<u32>,
    ahead: bool,
}

enum MatchState {
    /// The matcher, its next mask not computed yet.
    Idle(Box<Matcher>),
    /// The matcher is away computing the next mask.
    Computing(std::sync::mpsc::Receiver<(Box<Matcher>, NextMask)>),
    /// Transient, while switching states (never observed).
    Gone,
}

fn next_mask(m: &mut Matcher) -> NextMask {
    if m.is_stopped() {
        None
    } else {
        m.compute_mask().ok()
    }
}

impl Grammar {
    fn new(matcher: Matcher, eos: Vec<u32>, ahead: bool) -> Self {
        let mut g = Self {
            state: MatchState::Gone,
            eos,
            ahead,
        };
        g.compute_ahead(Box::new(matcher));
        g
    }

    /// The matcher back and the next token's mask.
    fn take_mask(&mut self) -> Option<(Box<Matcher>, NextMask)> {
        match std::mem::replace(&mut self.state, MatchState::Gone) {
            MatchState::Idle(mut m) => {
                let mask = next_mask(&mut m);
                Some((m, mask))
            }
            MatchState::Computing(rx) => rx.recv().ok(),
            MatchState::Gone => None,
        }
    }

    /// Sets every logit the grammar does not allow next to −∞ (all but end-of-sequence once
    /// the grammar is complete). An internal grammar error allows only end-of-sequence.
    pub fn mask(&mut self, logits: &mut [f32]) {
        let Some((m, mask)) = self.take_mask() else {
            return self.only_eos(logits);
        };
        self.state = MatchState::Idle(m);
        match mask {
            Some(m) => {
                let words = m.as_slice();
                for (chunk, &w) in logits.chunks_mut(32).zip(words) {
                    if w == u32::MAX {
                        continue;
                    }
                    for (i, l) in chunk.iter_mut().enumerate() {
                        if w >> i & 1 == 0 {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
                let covered = words.len() * 32;
                if covered < logits.len() {
                    logits[covered..].fill(f32::NEG_INFINITY);
                }
            }
            None => self.only_eos(logits),
        }
    }

    /// The next token's mask as `vocab` bits (bit `t % 32` of word `t / 32` allows token `t`),
    /// for a device sampler: what [`Grammar::mask`] leaves finite.
    pub fn allowed(&mut self, vocab: usize) -> std::sync::Arc<[u32]> {
        let mut words = vec![0u32; vocab.div_ceil(32)];
        let mask = self.take_mask().and_then(|(m, mask)| {
            self.state = MatchState::Idle(m);
            mask
        });
        match mask {
            Some(m) => {
                for (w, &v) in words.iter_mut().zip(m.as_slice()) {
                    *w = v;
                }
            }
            None => {
                for &t in self.eos.iter().filter(|&&t| (t as usize) < vocab) {
                    words[t as usize / 32] |= 1 << (t % 32);
                }
            }
        }
        if vocab % 32 != 0 {
            if let Some(last) = words.last_mut() {
                *last &= (1u32 << (vocab % 32)) - 1;
            }
        }
        words.into()
    }

    fn only_eos(&self, logits: &mut [f32]) {
        for (i, l) in logits.iter_mut().enumerate() {
            if !self.eos.contains(&(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Advances past the sampled token (end-of-sequence included) and starts computing the
    /// next mask in the background.
    pub fn accept(&mut self, token: u32) {
        let mut m = match std::mem::replace(&mut self.state, MatchState::Gone) {
            MatchState::Idle(m) => m,
            // Accepted without a mask asked for in between: the pending one is stale.
            MatchState::Computing(rx) => match rx.recv() {
                Ok((m, _)) => m,
                Err(_) => return,
            },
            MatchState::Gone => return,
        };
        if !m.is_stopped() {
            // A token the mask allowed always consumes; an error leaves the matcher stopped,
            // which then allows only end-of-sequence.
            let _ = m.consume_token(token);
        }
        self.compute_ahead(m);
    }

    /// Starts computing `m`'s next mask on rayon's pool (or leaves it for [`Grammar::mask`]
    /// when not computing ahead).
    fn compute_ahead(&mut self, mut m: Box<Matcher>) {
        if !self.ahead {
            self.state = MatchState::Idle(m);
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rayon::spawn(move || {
            let mask = next_mask(&mut m);
            let _ = tx.send((m, mask));
        });
        self.state = MatchState::Computing(rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_close_in_subschemas_only() {
        let mut s = serde_json::json!({
            "properties": {
                "a": {"properties": {"x": {"type": "integer"}}},
                "properties": {"type": "string"},
                "c": {"const": {"properties": 1}, "default": {"properties": 2}}
            },
            "anyOf": [{"properties": {"y": {}}}],
            "$defs": {"d": {"properties": {}, "additionalProperties": true}}
        });
        close_objects(&mut s);
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["a"]["additionalProperties"], false);
        assert_eq!(s["anyOf"][0]["additionalProperties"], false);
        assert_eq!(
            s["$defs"]["d"]["additionalProperties"], true,
            "the schema's own word stays"
        );
        assert_eq!(
            s["properties"]["c"]["const"],
            serde_json::json!({"properties": 1})
        );
        assert_eq!(
            s["properties"]["c"]["default"],
            serde_json::json!({"properties": 2})
        );
        assert!(s["properties"].get("additionalProperties").is_none());
    }
}
