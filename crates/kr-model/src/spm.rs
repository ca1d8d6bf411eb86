//! SentencePiece-style tokenizer over a vocabulary with scores (no merges list), as used by
//! GGUF `tokenizer.ggml.model == "llama"` files and llama2.c's `tokenizer.bin`.
//!
//! Encoding follows llama.cpp's `llm_tokenizer_spm` (itself equal to llama2.c's `encode`):
//! escape spaces as `▁`, prepend one `▁` to text that starts the input or follows a special
//! token, split into UTF-8 characters, then repeatedly merge the adjacent pair whose
//! concatenation is a vocabulary piece with the highest score (leftmost on ties); characters
//! not in the vocabulary fall back to `<0xXX>` byte tokens. Control and user-defined tokens
//! in the text are matched first (longest first) and emitted as their single id.
//!
//! Decoding maps `▁` to a space and `<0xXX>` to its byte, drops control/unknown tokens when
//! asked, and strips the one leading space of the piece right after BOS (llama2.c's rule),
//! so that windows decoded by [`crate::IncrementalDecoder`] stay consistent.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// The escaped space of SentencePiece.
pub const SPACE: char = '\u{2581}';

/// Token kinds, numbered as GGUF's `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    pub fn from_gguf(t: i64) -> Self {
        match t {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

/// A scored vocabulary and the special ids that encoding needs.
#[derive(Debug, Clone)]
pub struct SpmVocab {
    pieces: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<TokenKind>,
    index: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    /// Control and user-defined pieces matched verbatim in input text, longest first.
    specials: Vec<(String, u32)>,
    pub unk_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub add_space_prefix: bool,
}

/// A candidate merge of symbols `left` and `right`.
#[derive(Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
    id: u32,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first; on ties the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A span of the text being merged, in a doubly linked list over the characters.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2)
        .then(|| u8::from_str_radix(hex, 16).ok())
        .flatten()
}

impl SpmVocab {
    /// Builds a vocabulary. `pieces`, `scores` and `kinds` have one entry per id.
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        kinds: Vec<TokenKind>,
        bos_id: Option<u32>,
        add_space_prefix: bool,
    ) -> Self {
        let mut index = HashMap::with_capacity(pieces.len());
        let mut byte_ids = [None; 256];
        let mut specials = Vec::new();
        let mut unk_id = None;
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            index.entry(p.clone()).or_insert(id);
            match kinds[i] {
                TokenKind::Byte => {
                    if let Some(b) = parse_byte_piece(p) {
                        byte_ids[b as usize].get_or_insert(id);
                    }
                }
                TokenKind::Control | TokenKind::UserDefined if !p.is_empty() => {
                    specials.push((p.clone(), id));
                }
                TokenKind::Unknown => {
                    unk_id.get_or_insert(id);
                }
                _ => {}
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Self {
            pieces,
            scores,
            kinds,
            index,
            byte_ids,
            specials,
            unk_id,
            bos_id,
            add_space_prefix,
        }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// Encodes text; with `parse_special`, control and user-defined pieces in the text
    /// become their ids (user-defined ones always do, as in llama.cpp).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        let mut rest = text;
        while !rest.is_empty() {
            let (plain, special) = self.next_special(rest, parse_special);
            if !plain.is_empty() {
                self.encode_fragment(plain, prev_special, &mut out);
                prev_special = false;
            }
            rest = &rest[plain.len()..];
            if let Some((len, id)) = special {
                out.push(id);
                prev_special = true;
                rest = &rest[len..];
            }
        }
        out
    }

    /// The text before the first special piece in `text`, and that piece's length and id.
    fn next_special<'a>(
        &self,
        text: &'a str,
        parse_special: bool,
    ) -> (&'a str, Option<(usize, u32)>) {
        let mut best: Option<(usize, usize, u32)> = None;
        for (p, id) in &self.specials {
            let allowed = parse_special || self.kinds[*id as usize] == TokenKind::UserDefined;
            if !allowed {
                continue;
            }
            if let Some(pos) = text.find(p.as_str()) {
                // Earliest match; `specials` is longest first, so ties keep the longest.
                if best.is_none_or(|(b, _, _)| pos < b) {
                    best = Some((pos, p.len(), *id));
                }
            }
        }
        match best {
            Some((pos, len, id)) => (&text[..pos], Some((len, id))),
            None => (text, None),
        }
    }

    /// Encodes one run of plain text (no special pieces inside).
    fn encode_fragment(&self, text: &str, prefix_space: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && prefix_space {
            s.push(SPACE);
        }
        s.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        let mut syms: Vec<Symbol> = s
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            })
            .collect();
        if let Some(last) = syms.last_mut() {
            last.next = None;
        }
        let mut heap = BinaryHeap::new();
        for i in 1..syms.len() {
            self.try_bigram(&s, &syms, i - 1, i, &mut heap);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            // Skip bigrams made stale by an earlier merge of either side.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            syms[b.left].len += r.len;
            syms[b.left].next = r.next;
            syms[b.right].len = 0;
            if let Some(n) = r.next {
                syms[n].prev = Some(b.left);
            }
            if let Some(p) = l.prev {
                self.try_bigram(&s, &syms, p, b.left, &mut heap);
            }
            if let Some(n) = r.next {
                self.try_bigram(&s, &syms, b.left, n, &mut heap);
            }
        }
        let mut cur = (!syms.is_empty()).then_some(0);
        while let Some(i) = cur {
            let sym = syms[i];
            self.emit_symbol(&s[sym.start..sym.start + sym.len], out);
            cur = sym.next;
        }
    }

    fn try_bigram(
        &self,
        s: &str,
        syms: &[Symbol],
        left: usize,
        right: usize,
        heap: &mut BinaryHeap<Bigram>,
    ) {
        let (l, r) = (syms[left], syms[right]);
        let len = l.len + r.len;
        let Some(&id) = self.index.get(&s[l.start..l.start + len]) else {
            return;
        };
        heap.push(Bigram {
            score: self.scores[id as usize],
            left,
            right,
            len,
            id,
        });
    }

    /// A final symbol: its piece id, or its bytes as byte tokens (or UNK) when absent.
    fn emit_symbol(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.index.get(piece) {
            out.push(id);
            return;
        }
        out.extend(
            piece
                .bytes()
                .filter_map(|b| self.byte_ids[b as usize].or(self.unk_id)),
        );
    }

    /// Decodes ids to text. `skip_special` drops control and unknown tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        let mut after_bos = false;
        for &id in ids {
            let Some(kind) = self.kind(id) else { continue };
            let piece = &self.pieces[id as usize];
            match kind {
                TokenKind::Byte => match parse_byte_piece(piece) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(piece.as_bytes()),
                },
                TokenKind::Control | TokenKind::Unknown | TokenKind::Unused if skip_special => {}
                _ => {
                    let text = piece.replace(SPACE, " ");
                    let text = match after_bos && self.add_space_prefix {
                        true => text.strip_prefix(' ').unwrap_or(&text),
                        false => &text,
                    };
                    bytes.extend_from_slice(text.as_bytes());
                }
            }
            after_bos = Some(id) == self.bos_id;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes token `id` stands for in output text (`▁` as a space, byte pieces as their
    /// byte) and whether it is a control, unknown or unused token; `None` past the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<(Vec<u8>, bool)> {
        let kind = self.kind(id)?;
        let piece = &self.pieces[id as usize];
        Some(match kind {
            TokenKind::Byte => match parse_byte_piece(piece) {
                Some(b) => (vec![b], false),
                None => (piece.as_bytes().to_vec(), false),
            },
            TokenKind::Control | TokenKind::Unknown | TokenKind::Unused => {
                (piece.as_bytes().to_vec(), true)
            }
            _ => (piece.replace(SPACE, " ").into_bytes(), false),
        })
    }

    /// The `<0xXX>` piece name of a byte (for building vocabularies).
    pub fn byte_piece(b: u8) -> String {
        byte_piece(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> SpmVocab {
        let mut pieces: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut kinds = vec![TokenKind::Unknown, TokenKind::Control, TokenKind::Control];
        for b in 0..=255u8 {
            pieces.push(byte_piece(b));
            kinds.push(TokenKind::Byte);
        }
        for p in [
            "▁", "h", "e", "l", "o", "he", "ll", "llo", "hello", "▁hello",
        ] {
            pieces.push(p.to_string());
            kinds.push(TokenKind::Normal);
        }
        let scores = (0..pieces.len()).map(|i| i as f32).collect();
        SpmVocab::new(pieces, scores, kinds, Some(1), true)
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let v = vocab();
        let hello = v.token_to_id("▁hello").unwrap();
        assert_eq!(v.encode("hello", false), vec![hello]);
        let space = v.token_to_id("▁").unwrap();
        // "é" is not in the vocabulary: two byte tokens.
        assert_eq!(v.encode("é", false), vec![space, 3 + 0xC3, 3 + 0xA9]);
        assert!(v.encode("", false).is_empty());
    }

    #[test]
    fn decode_strips_the_space_after_bos_and_joins_bytes() {
        let v = vocab();
        let ids = v.encode("hello é", false);
        assert_eq!(v.decode(&ids, true), " hello é");
        let mut with_bos = vec![1];
        with_bos.extend(&ids);
        assert_eq!(v.decode(&with_bos, true), "hello é");
        assert_eq!(v.decode(&with_bos, false), "<s>hello é");
    }

    #[test]
    fn special_pieces_split_the_text() {
        let v = vocab();
        let ids = v.encode("hello</s>hello", true);
        let hello = v.token_to_id("▁hello").unwrap();
        assert_eq!(ids, vec![hello, 2, hello]);
        let ids = v.encode("</s>", false);
        assert_ne!(ids, vec![2]);
    }
}
