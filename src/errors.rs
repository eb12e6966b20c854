//! Errors as one line of text, for messages that cross a boundary as text (an event's
//! data, an HTTP answer, a log field): typed errors stay typed everywhere else.

/// An error with its causes, one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_follow_the_error() {
        let io = std::io::Error::other("disk full");
        let err = anyhow::Error::new(io).context("writing the spool");
        let err: &dyn std::error::Error = err.as_ref();
        assert_eq!(super::chain(err), "writing the spool: disk full");
    }
}
