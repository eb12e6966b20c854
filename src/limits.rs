//! The ingest API's size limits, defined once. `serve`, a worker's local endpoint, `emit`
//! and the worker's batching all take them from here and word their refusals with the
//! functions below, so no hop accepts what the next one would refuse.

/// Largest request body accepted: a batch of up to [`MAX_BATCH_EVENTS`] events.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Most events in one batch request; clients split larger batches.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Largest event, in bytes as sent: one that, with its newline, fills a batch request alone.
/// Whatever one hop accepts can therefore always be forwarded to the next as NDJSON.
pub const MAX_EVENT_BYTES: usize = MAX_BODY_BYTES - 1;

/// About the most bytes of documents one page of a listing holds (events or runs): with
/// [`MAX_EVENT_BYTES`] per event, an answer stays within a few MiB whatever is stored.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Longest log message a worker reports from a child's output or a tailed file; a longer
/// one is cut, with [`TRUNCATED_MARKER`] saying how much was left out. JSON escaping makes
/// a message at most six times longer (`\u001b` for one byte), so a cut message always fits
/// in an event with room to spare.
pub const MAX_LOG_MESSAGE_BYTES: usize = 256 * 1024;

/// Ends a log message that was cut at [`MAX_LOG_MESSAGE_BYTES`].
pub const TRUNCATED_MARKER: &str = " …[truncated by scientist:";

const _: () = assert!(6 * MAX_LOG_MESSAGE_BYTES + 64 * 1024 <= MAX_EVENT_BYTES);

/// The refusal of a request body over [`MAX_BODY_BYTES`] (413).
pub fn body_too_large() -> String {
    format!(
        "the request body is larger than {MAX_BODY_BYTES} bytes: send smaller batches (clients split them), \
         and large content as artifacts"
    )
}

/// Ok when an event of `bytes` bytes (as it will be sent) is within [`MAX_EVENT_BYTES`];
/// else the refusal, worded the same on every hop.
pub fn check_event(bytes: usize) -> Result<(), String> {
    if bytes <= MAX_EVENT_BYTES {
        return Ok(());
    }
    Err(format!(
        "the event is {bytes} bytes; the limit is {MAX_EVENT_BYTES} bytes per event: \
         store large content as an artifact (a file in the run directory)"
    ))
}

/// The length of `value` serialized as compact JSON, counted without building the text.
pub fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing JSON values cannot fail, and counting bytes cannot either.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The refusal of a batch of `count` events (over [`MAX_BATCH_EVENTS`]).
pub fn batch_too_large(count: usize) -> String {
    format!("the batch has {count} events; the limit is {MAX_BATCH_EVENTS}: split it and send the parts")
}

/// Cuts `message` to [`MAX_LOG_MESSAGE_BYTES`] (at a character boundary) and says how many
/// bytes were left out, so an oversize line is reported, never dropped.
pub fn truncate_log_message(message: &mut String) {
    if message.len() <= MAX_LOG_MESSAGE_BYTES {
        return;
    }
    let mut end = MAX_LOG_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let left_out = message.len() - end;
    message.truncate(end);
    message.push_str(&format!("{TRUNCATED_MARKER} {left_out} more bytes]"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_message_says_how_much_was_left_out_and_stays_valid_utf8() {
        let mut message = "é".repeat(MAX_LOG_MESSAGE_BYTES); // two bytes each
        let original = message.len();
        truncate_log_message(&mut message);
        let (kept, marker) = message.split_once(TRUNCATED_MARKER).expect("marked");
        assert_eq!(kept.len(), MAX_LOG_MESSAGE_BYTES);
        assert_eq!(marker, format!(" {} more bytes]", original - MAX_LOG_MESSAGE_BYTES));
        let mut short = "short".to_owned();
        truncate_log_message(&mut short);
        assert_eq!(short, "short");
    }

    #[test]
    fn the_event_limit_fits_a_batch_line() {
        assert!(check_event(MAX_EVENT_BYTES).is_ok());
        let refused = check_event(MAX_EVENT_BYTES + 1).expect_err("over");
        assert!(refused.contains(&MAX_EVENT_BYTES.to_string()), "{refused}");
        assert_eq!(MAX_EVENT_BYTES + 1, MAX_BODY_BYTES);
    }
}
