//! Splits a streamed LLM reply into sentences (and long clauses) for text-to-speech.
//!
//! Speech starts as soon as the first sentence is complete, so the splitter emits a sentence the
//! moment its end is certain: a terminator (`.`, `!`, `?`, `…`, or a newline) followed by white space.
//! A clause ending in `,`, `;` or `:` is emitted early once it is long enough to be worth speaking on
//! its own (`min_clause_chars`), which keeps the first audio early on long-winded replies.
//! Decimal numbers ("3.5") and common abbreviations ("Dr.", "e.g.") do not end a sentence.
//!
//! Cost: one push per token, amortised O(token length); the buffer is reused across sentences.

/// Accumulates tokens and yields complete sentences.
#[derive(Debug, Clone)]
pub struct SentenceSplitter {
    buf: String,
    /// Byte offset up to which `buf` has been scanned for boundaries.
    scanned: usize,
    min_clause_chars: usize,
}

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx", "no",
];

impl Default for SentenceSplitter {
    fn default() -> Self {
        Self::new(60)
    }
}

impl SentenceSplitter {
    /// A splitter that also breaks at `,;:` once a clause holds `min_clause_chars` characters.
    pub fn new(min_clause_chars: usize) -> Self {
        SentenceSplitter {
            buf: String::with_capacity(256),
            scanned: 0,
            min_clause_chars,
        }
    }

    /// Adds a token; calls `emit` once for every sentence the token completes.
    pub fn push(&mut self, token: &str, mut emit: impl FnMut(String)) {
        self.buf.push_str(token);
        while let Some(end) = self.find_boundary() {
            let rest = self.buf.split_off(end);
            let sentence = std::mem::replace(&mut self.buf, rest);
            self.scanned = 0;
            let trimmed = sentence.trim();
            if !trimmed.is_empty() {
                emit(trimmed.to_owned());
            }
        }
    }

    /// Ends the reply: returns what is left, if anything but white space.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        let trimmed = rest.trim();
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    }

    /// Forgets any buffered text (the reply was cancelled).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.scanned = 0;
    }

    /// The byte index just past the first certain boundary in the buffer, if any.
    fn find_boundary(&mut self) -> Option<usize> {
        let bytes = self.buf.as_bytes();
        // A boundary needs the character after the punctuation, so the last byte is never decided.
        let mut i = self.scanned;
        while i + 1 < bytes.len() {
            let c = bytes[i];
            let next = bytes[i + 1];
            let is_space = |b: u8| b == b' ' || b == b'\n' || b == b'\t' || b == b'\r';
            let boundary = match c {
                b'\n' => !self.buf[..i].trim().is_empty(),
                b'!' | b'?' => is_space(next),
                b'.' => is_space(next) && !self.is_abbreviation(i),
                // '…' is E2 80 A6; this scan works on bytes and never slices mid-character.
                0xE2 => {
                    if bytes[i..].starts_with("… ".as_bytes()) {
                        return Some(i + '…'.len_utf8());
                    }
                    false
                }
                b',' | b';' | b':' => {
                    is_space(next)
                        && self.buf[..i].trim_start().chars().count() >= self.min_clause_chars
                }
                _ => false,
            };
            if boundary {
                return Some(i + 1);
            }
            i += 1;
        }
        // Resume a few bytes back next time: a multi-byte '…' may be cut at the end.
        self.scanned = i.saturating_sub(3);
        None
    }

    /// Whether the '.' at byte `dot` ends an abbreviation or a single initial rather than a sentence.
    fn is_abbreviation(&self, dot: usize) -> bool {
        let before = &self.buf[..dot];
        let word = before
            .rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"')
            .next()
            .unwrap_or("");
        let lower = word.to_ascii_lowercase();
        if ABBREVIATIONS.contains(&lower.as_str()) {
            return true;
        }
        // A single capital letter ("J. R. R. Tolkien").
        word.len() == 1 && word.chars().all(|c| c.is_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_tokens(tokens: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::default();
        let mut out = Vec::new();
        for t in tokens {
            s.push(t, |x| out.push(x));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_at_sentence_ends_as_soon_as_they_are_certain() {
        let mut s = SentenceSplitter::default();
        let mut out = Vec::new();
        s.push("Hello there.", |x| out.push(x));
        assert!(
            out.is_empty(),
            "the end is not certain before the next character"
        );
        s.push(" How", |x| out.push(x));
        assert_eq!(out, vec!["Hello there."]);
        s.push(" are you?", |x| out.push(x));
        assert_eq!(s.finish().as_deref(), Some("How are you?"));
    }

    #[test]
    fn keeps_decimals_and_abbreviations_together() {
        let out = split_tokens(&["It costs 3.5 dollars, says Dr. Smith. ", "Bye!"]);
        assert_eq!(out, vec!["It costs 3.5 dollars, says Dr. Smith.", "Bye!"]);
    }

    #[test]
    fn splits_long_clauses_at_commas() {
        let long =
            "This is a rather long clause that goes on and on for quite a while, and then more.";
        let out = split_tokens(&[long]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].ends_with(','));
    }

    #[test]
    fn token_boundaries_do_not_change_the_result() {
        let text = "One. Two! Three? Four, five. Mr. X met J. R. R. Tolkien. End";
        let whole = split_tokens(&[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split_tokens(&refs), whole);
        assert_eq!(whole.concat().replace(' ', ""), text.replace(' ', ""));
    }

    #[test]
    fn multi_byte_text_is_safe_at_any_token_boundary() {
        let text = "Le café est bon… Très bon! Ça coûte 3,5 €, n'est-ce pas? Oui";
        let whole = split_tokens(&[text]);
        assert_eq!(whole[0], "Le café est bon…");
        for cut in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            assert_eq!(
                split_tokens(&[&text[..cut], &text[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn newlines_end_sentences_and_blank_text_is_dropped() {
        assert_eq!(
            split_tokens(&["A list\n", "item two", "  "]),
            vec!["A list", "item two"]
        );
        assert!(split_tokens(&["   "]).is_empty());
    }
}
