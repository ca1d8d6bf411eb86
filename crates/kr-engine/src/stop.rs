//! Stop strings matched across token boundaries.
//!
//! Invariant: text is released only when no stop string can still begin inside it, so the
//! client never sees any part of a stop string; at most `longest stop - 1` bytes are held.

/// Holds back just enough text to recognise a stop string split over several tokens.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    max_len: usize,
}

/// What a piece of new text yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopScan {
    /// Text safe to send now.
    pub emit: String,
    /// True when a stop string was found; `emit` ends right before it.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops: stops.to_vec(),
            held: String::new(),
            max_len,
        }
    }

    pub fn push(&mut self, delta: &str) -> StopScan {
        if self.stops.is_empty() {
            return StopScan {
                emit: delta.to_string(),
                stopped: false,
            };
        }
        self.held.push_str(delta);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopScan {
                emit,
                stopped: true,
            };
        }
        let mut cut = self.held.len().saturating_sub(self.max_len - 1);
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopScan {
            emit,
            stopped: false,
        }
    }

    /// Releases the held text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_split_across_tokens_is_never_emitted() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        let mut out = String::new();
        for piece in ["Hello ", "wor", "ld E", "N", "D more"] {
            let s = m.push(piece);
            out.push_str(&s.emit);
            if s.stopped {
                assert_eq!(out, "Hello world ");
                return;
            }
        }
        panic!("stop string not found");
    }

    #[test]
    fn held_text_is_released_at_finish_and_unicode_is_safe() {
        let mut m = StopMatcher::new(&["§§§".to_string()]);
        let s = m.push("héllo §");
        assert!(!s.stopped);
        assert_eq!(s.emit + &m.finish(), "héllo §");
        let mut none = StopMatcher::new(&[]);
        assert_eq!(none.push("x").emit, "x");
    }
}
