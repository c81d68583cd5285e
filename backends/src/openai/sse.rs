//! A sans-IO parser for server-sent events (the `text/event-stream` format of the WHATWG HTML
//! standard, §9.2), as streamed by OpenAI-compatible chat APIs.
//!
//! It takes the response body as raw byte chunks, split anywhere (mid-line, mid-UTF-8 character,
//! between the `\r` and `\n` of a CRLF), and hands back the `data` of each complete event. Lines
//! are cut on raw bytes and decoded only once whole, so a character split across chunks is never
//! mangled. It keeps at most one partial line and one event's data, and reuses both buffers.
//!
//! Written here rather than taken from a crate because voxd needs only the `data` field and a
//! bound on event size, and the whole parser is smaller than the glue to an external one.
//!
//! Supported: `\n`, `\r\n` and `\r` line endings, `:` comments, several `data:` lines per event
//! (joined with `\n`), a leading byte-order mark; `event`, `id`, `retry` and unknown fields are
//! ignored. One leniency: at the end of the body an unterminated last event is still handed out
//! (`finish`), so a server that closes right after `data: [DONE]` without a blank line is understood.

use std::borrow::Cow;

/// The largest event (its `data`, or one line of it) the parser buffers. OpenAI's chunks are a
/// few hundred bytes; a bigger one means a broken or hostile server, not a reply.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// An event or a line grew beyond `MAX_EVENT_BYTES` without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventTooLarge;

/// The parser. Feed it with `push`, then drain it with `next_event` until it returns `None`.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Received bytes not yet cut into lines; `pos` is where the unread part starts.
    buf: Vec<u8>,
    pos: usize,
    /// The `data` of the event being built.
    data: String,
    /// Whether the event being built has a `data` field (an empty one counts).
    has_data: bool,
    /// `data` was handed out by the last `next_event` and is cleared on the next call.
    dispatched: bool,
    /// The last line ended with `\r` at the very end of the received bytes: a `\n` arriving next
    /// belongs to that line ending.
    skip_lf: bool,
    /// Whether a line has been read yet (the byte-order mark may only start the first one).
    seen_line: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub(crate) fn new() -> SseParser {
        SseParser::default()
    }

    /// Appends received bytes.
    ///
    /// # Errors
    /// `EventTooLarge` when the unfinished line plus the event's data exceed `MAX_EVENT_BYTES`.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), EventTooLarge> {
        // Only a partial line is left before `pos` is reached again, so this moves little.
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(bytes);
        self.check_size()
    }

    /// The `data` of the next complete event, or `None` until more bytes are pushed. The text is
    /// valid until the next call.
    ///
    /// # Errors
    /// `EventTooLarge` when an event's data grows beyond `MAX_EVENT_BYTES`.
    pub(crate) fn next_event(&mut self) -> Result<Option<&str>, EventTooLarge> {
        self.clear_dispatched();
        while let Some((start, end)) = self.next_line() {
            if self.take_line(start, end)? {
                self.dispatched = true;
                return Ok(Some(&self.data));
            }
        }
        Ok(None)
    }

    /// Ends the stream: the `data` of an event left without its terminating blank line (its last
    /// line may lack a line ending too), if any. Call after `next_event` returned `None`.
    ///
    /// # Errors
    /// `EventTooLarge` as for `next_event`.
    pub(crate) fn finish(&mut self) -> Result<Option<&str>, EventTooLarge> {
        self.clear_dispatched();
        if self.pos < self.buf.len() {
            let (start, end) = (self.pos, self.buf.len());
            self.pos = end;
            // A final empty line would dispatch, which is exactly what ending does anyway.
            if self.take_line(start, end)? {
                self.dispatched = true;
                return Ok(Some(&self.data));
            }
        }
        if self.has_data {
            self.has_data = false;
            self.dispatched = true;
            return Ok(Some(&self.data));
        }
        Ok(None)
    }

    fn clear_dispatched(&mut self) {
        if self.dispatched {
            self.data.clear();
            self.dispatched = false;
        }
    }

    /// Cuts the next complete line out of the buffer: its byte range, without the line ending,
    /// which is consumed. `None` when no complete line is buffered.
    fn next_line(&mut self) -> Option<(usize, usize)> {
        if self.skip_lf && self.pos < self.buf.len() {
            self.skip_lf = false;
            if self.buf[self.pos] == b'\n' {
                self.pos += 1;
            }
        }
        let rest = &self.buf[self.pos..];
        let at = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let (start, end) = (self.pos, self.pos + at);
        if self.buf[end] == b'\r' {
            match self.buf.get(end + 1) {
                Some(b'\n') => self.pos = end + 2,
                Some(_) => self.pos = end + 1,
                None => {
                    self.pos = end + 1;
                    self.skip_lf = true;
                }
            }
        } else {
            self.pos = end + 1;
        }
        Some((start, end))
    }

    /// Interprets the line `buf[start..end]`. Returns whether it completed an event (which is
    /// then in `data`).
    fn take_line(&mut self, start: usize, end: usize) -> Result<bool, EventTooLarge> {
        let line = String::from_utf8_lossy(&self.buf[start..end]);
        let line = if self.seen_line {
            line
        } else {
            self.seen_line = true;
            match line.strip_prefix('\u{feff}') {
                Some(rest) => Cow::Owned(rest.to_owned()),
                None => line,
            }
        };
        if line.is_empty() {
            // A blank line ends the event; one without data is not dispatched.
            let complete = self.has_data;
            self.has_data = false;
            return Ok(complete);
        }
        if line.starts_with(':') {
            return Ok(false);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
            self.check_size()?;
        }
        Ok(false)
    }

    fn check_size(&self) -> Result<(), EventTooLarge> {
        if self.buf.len() - self.pos + self.data.len() > MAX_EVENT_BYTES {
            Err(EventTooLarge)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` in order and collects every event, including the one `finish` returns.
    fn parse(chunks: &[&[u8]]) -> Vec<String> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.push(chunk).expect("small events");
            while let Some(data) = parser.next_event().expect("small events") {
                events.push(data.to_owned());
            }
        }
        if let Some(data) = parser.finish().expect("small events") {
            events.push(data.to_owned());
        }
        events
    }

    /// A stream using every feature: CRLF, a comment, multi-line data, non-ASCII text, an
    /// ignored field, a field with no space after the colon, then `[DONE]`.
    const SAMPLE: &str = ": keep-alive\r\n\r\n\
        data: {\"a\":\"caf\u{e9}\"}\r\n\r\n\
        event: message\ndata: {\"b\":\ndata: \"\u{1f600}\"}\n\n\
        id: 7\rdata:x\r\r\
        data: [DONE]\n\n";

    const SAMPLE_EVENTS: [&str; 4] = [
        "{\"a\":\"caf\u{e9}\"}",
        "{\"b\":\n\"\u{1f600}\"}",
        "x",
        "[DONE]",
    ];

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_eq!(parse(&[SAMPLE.as_bytes()]), SAMPLE_EVENTS);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = SAMPLE.as_bytes();
        for i in 0..=bytes.len() {
            assert_eq!(
                parse(&[&bytes[..i], &bytes[i..]]),
                SAMPLE_EVENTS,
                "split at {i}"
            );
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let chunks: Vec<&[u8]> = SAMPLE.as_bytes().chunks(1).collect();
        assert_eq!(parse(&chunks), SAMPLE_EVENTS);
    }

    #[test]
    fn every_pair_of_split_points_gives_the_same_events() {
        let bytes = SAMPLE.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                assert_eq!(
                    parse(&[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    SAMPLE_EVENTS,
                    "split at {i} and {j}"
                );
            }
        }
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_ending() {
        // Were the `\n` taken as a second line ending, it would be a blank line dispatching
        // "a" and "b" as two events.
        assert_eq!(parse(&[b"data: a\r", b"\ndata: b\r\n\r\n"]), ["a\nb"]);
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert_eq!(parse(&[b": ping\n\nevent: x\n\n\n\ndata: y\n\n"]), ["y"]);
    }

    #[test]
    fn an_empty_data_field_is_an_empty_event() {
        assert_eq!(parse(&[b"data\n\ndata:\n\n"]), ["", ""]);
    }

    #[test]
    fn only_one_space_after_the_colon_is_stripped() {
        assert_eq!(parse(&[b"data:  two\n\n"]), [" two"]);
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        assert_eq!(parse(&[b"\xef\xbb", b"\xbfdata: a\n\n"]), ["a"]);
        // Only at the very start: elsewhere it makes the field name unknown.
        assert_eq!(parse(&[b"data: a\n\n\xef\xbb\xbfdata: b\n\n"]), ["a"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(parse(&[b"data: a\xffb\n\n"]), ["a\u{fffd}b"]);
    }

    #[test]
    fn an_unterminated_last_event_is_handed_out_at_the_end() {
        assert_eq!(parse(&[b"data: a\n\ndata: [DONE]"]), ["a", "[DONE]"]);
        assert_eq!(parse(&[b"data: [DONE]\n"]), ["[DONE]"]);
        assert_eq!(parse(&[b"data: [DONE]\r"]), ["[DONE]"]);
        assert!(parse(&[b": only a comment"]).is_empty());
        assert!(parse(&[b""]).is_empty());
    }

    #[test]
    fn finish_after_a_complete_stream_returns_nothing() {
        let mut parser = SseParser::new();
        parser.push(b"data: a\n\n").unwrap();
        assert_eq!(parser.next_event().unwrap(), Some("a"));
        assert_eq!(parser.next_event().unwrap(), None);
        assert_eq!(parser.finish().unwrap(), None);
    }

    #[test]
    fn buffers_are_bounded() {
        let mut parser = SseParser::new();
        let line = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(parser.push(&line), Err(EventTooLarge));

        // Many data lines, each small, adding up to too much.
        let mut parser = SseParser::new();
        let line = format!("data: {}\n", "y".repeat(1000));
        let result = (0..=MAX_EVENT_BYTES / 1000).try_for_each(|_| {
            parser.push(line.as_bytes())?;
            assert_eq!(parser.next_event()?, None);
            Ok(())
        });
        assert_eq!(result, Err(EventTooLarge));
    }

    #[test]
    fn consumed_bytes_are_released() {
        let mut parser = SseParser::new();
        for _ in 0..1000 {
            parser.push(b"data: 0123456789\n\n").unwrap();
            assert_eq!(parser.next_event().unwrap(), Some("0123456789"));
        }
        assert!(parser.buf.len() < 64, "{} bytes kept", parser.buf.len());
    }
}
