//! Reasoning apart from the answer, for chat templates whose models think in
//! `<think>…</think>` (Qwen3, DeepSeek-R1 distils): the reply's reasoning goes to
//! `reasoning_content`, the rest to `content`, whole or streamed.
//!
//! Invariant: every byte of the reply goes to exactly one of the two, except the tags and
//! the whitespace around them; nothing is withheld once the stream ends.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Whether a chat template's models reason in `<think>` blocks.
pub fn template_thinks(source: &str) -> bool {
    source.contains(CLOSE)
}

/// A whole reply as `(reasoning, content)`, the same as a [`Splitter`] gives: a reply that
/// opens `<think>` (or follows a prompt that did: `opened`) and never closes it (cut by
/// `max_tokens`) is all reasoning; one without the tags is all content.
pub fn split(text: &str, opened: bool) -> (Option<String>, String) {
    if !opened && !text.trim_start().starts_with(OPEN) {
        return (None, text.to_string());
    }
    match text.find(CLOSE) {
        Some(end) => {
            let r = text[..end].trim_start();
            let r = r.strip_prefix(OPEN).unwrap_or(r);
            (
                Some(r.trim().to_string()),
                text[end + CLOSE.len()..].trim_start().to_string(),
            )
        }
        None => {
            let t = text.trim_start();
            (
                Some(t.strip_prefix(OPEN).unwrap_or(t).trim_start().to_string()),
                String::new(),
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Nothing decided yet: the reply may open with `<think>`.
    Start,
    Thinking,
    Answer,
}

/// Splits a streamed reply as it comes, holding back only what may be part of a tag.
#[derive(Debug, Clone)]
pub struct Splitter {
    phase: Phase,
    buf: String,
    /// Whether any of the current part (reasoning, then content) was sent: whitespace
    /// after a tag is dropped until then, as [`split`] trims it.
    sent: bool,
}

impl Splitter {
    /// A splitter for a reply whose prompt already opened `<think>` (`opened`) or not.
    pub fn new(opened: bool) -> Self {
        Self {
            phase: if opened {
                Phase::Thinking
            } else {
                Phase::Start
            },
            buf: String::new(),
            sent: false,
        }
    }
}

/// Whether a rendered prompt leaves a `<think>` block open for the reply.
pub fn prompt_opens(prompt_tail: &str) -> bool {
    let t = prompt_tail.trim_end();
    t.ends_with(OPEN)
}

/// Bytes at the end of `s` that could begin `tag`.
fn partial_tail(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&k| s.ends_with(&tag[..k]))
        .unwrap_or(0)
}

impl Splitter {
    /// Takes the next piece of text; returns `(reasoning, content)` to send now.
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.buf.push_str(text);
        let (mut reasoning, mut content) = (String::new(), String::new());
        loop {
            match self.phase {
                Phase::Start => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.buf = rest.trim_start().to_string();
                        self.phase = Phase::Thinking;
                    } else if t.is_empty() || OPEN.starts_with(t) {
                        return (reasoning, content);
                    } else {
                        self.phase = Phase::Answer;
                    }
                }
                Phase::Thinking => {
                    if !self.sent {
                        self.buf = self.buf.trim_start().to_string();
                    }
                    match self.buf.find(CLOSE) {
                        Some(end) => {
                            reasoning.push_str(self.buf[..end].trim_end());
                            self.buf = self.buf[end + CLOSE.len()..].to_string();
                            (self.phase, self.sent) = (Phase::Answer, false);
                        }
                        None => {
                            // Hold what may start the tag, and trailing whitespace (it may
                            // come right before the tag).
                            let tag = self.buf.len() - partial_tail(&self.buf, CLOSE);
                            let cut = self.buf[..tag].trim_end().len();
                            reasoning.push_str(&self.buf[..cut]);
                            self.sent |= cut > 0;
                            self.buf.drain(..cut);
                            return (reasoning, content);
                        }
                    }
                }
                Phase::Answer => {
                    let text = match self.sent {
                        true => self.buf.as_str(),
                        false => self.buf.trim_start(),
                    };
                    content.push_str(text);
                    self.sent |= !text.is_empty();
                    self.buf.clear();
                    return (reasoning, content);
                }
            }
        }
    }

    /// The end of the stream: whatever is still held.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.buf);
        match self.phase {
            Phase::Thinking => (rest.trim_end().to_string(), String::new()),
            _ => (String::new(), rest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(pieces: &[&str]) -> (String, String) {
        streamed_after(false, pieces)
    }

    fn streamed_after(opened: bool, pieces: &[&str]) -> (String, String) {
        let mut s = Splitter::new(opened);
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            let (a, b) = s.push(p);
            r += &a;
            c += &b;
        }
        let (a, b) = s.finish();
        (r + &a, c + &b)
    }

    #[test]
    fn whole_and_streamed_agree_however_the_text_is_cut() {
        let text = "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.";
        assert_eq!(
            split(text, false),
            (Some("Let me see: 2+2.".into()), "It is 4.".into())
        );
        for cut in 1..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let (r, c) = streamed(&[&text[..cut], &text[cut..]]);
            assert_eq!(
                (r.as_str(), c.as_str()),
                ("Let me see: 2+2.", "It is 4."),
                "cut {cut}"
            );
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(
            streamed(&pieces),
            ("Let me see: 2+2.".into(), "It is 4.".into())
        );
    }

    #[test]
    fn replies_without_tags_unclosed_or_opened_by_the_prompt() {
        assert_eq!(split("Just 4.", false), (None, "Just 4.".into()));
        assert_eq!(
            streamed(&["Just", " 4."]),
            (String::new(), "Just 4.".into())
        );
        assert_eq!(split("a </think> b", false), (None, "a </think> b".into()));
        assert_eq!(
            split("<think>still going", false),
            (Some("still going".into()), String::new())
        );
        assert_eq!(
            streamed(&["<think>still", " going"]),
            ("still going".into(), String::new())
        );
        assert_eq!(
            split("thought</think>answer", true),
            (Some("thought".into()), "answer".into())
        );
        assert_eq!(
            streamed_after(true, &["thought</th", "ink>answer"]),
            ("thought".into(), "answer".into())
        );
        assert!(prompt_opens("<|im_start|>assistant\n<think>\n") && !prompt_opens("assistant\n"));
    }
}
