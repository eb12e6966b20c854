//! Splits a child's raw output into lines. A line rewritten in place with carriage returns
//! (a tqdm-style progress bar) is reported with its latest state at most once per interval,
//! and with its final state when it ends, instead of once per redraw.

use std::time::{Duration, Instant};

/// Longer lines are cut into pieces of this size, so one runaway line cannot hold memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// A piece of output ready to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A finished line.
    Line(String),
    /// The latest state of a line still being rewritten in place.
    Progress(String),
}

#[derive(Debug)]
pub struct Splitter {
    partial: Vec<u8>,
    /// A carriage return was seen and its meaning (line end or rewrite) waits on the next byte.
    after_cr: bool,
    in_place: Option<InPlace>,
    interval: Duration,
}

#[derive(Debug)]
struct InPlace {
    latest: String,
    /// `latest` has not been reported.
    unreported: bool,
    reported_at: Option<Instant>,
}

impl Splitter {
    /// Reports a rewritten line at most once per `interval`.
    pub fn new(interval: Duration) -> Splitter {
        Splitter { partial: Vec::new(), after_cr: false, in_place: None, interval }
    }

    pub fn feed(&mut self, mut bytes: &[u8], now: Instant, out: &mut Vec<Piece>) {
        while let Some(&byte) = bytes.first() {
            match byte {
                b'\n' => {
                    self.after_cr = false;
                    self.end_line(out);
                    bytes = &bytes[1..];
                }
                b'\r' => {
                    // "\r\n" ends a line; "\r" then anything else rewrites it: wait and see.
                    if self.after_cr {
                        self.rewrite(now, out);
                    }
                    self.after_cr = true;
                    bytes = &bytes[1..];
                }
                _ => {
                    if self.after_cr {
                        self.after_cr = false;
                        self.rewrite(now, out);
                    }
                    // The text up to the next line end or carriage return, copied at once.
                    let text = bytes.iter().position(|&byte| matches!(byte, b'\n' | b'\r')).unwrap_or(bytes.len());
                    let taken = text.min(MAX_LINE_BYTES - self.partial.len());
                    self.partial.extend_from_slice(&bytes[..taken]);
                    bytes = &bytes[taken..];
                    if self.partial.len() >= MAX_LINE_BYTES {
                        self.end_line(out);
                    }
                }
            }
        }
    }

    /// Reports a rewritten line whose latest state has waited for its turn.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Piece>) {
        if let Some(in_place) = &mut self.in_place
            && in_place.unreported
            && in_place.reported_at.is_none_or(|at| now.duration_since(at) >= self.interval)
        {
            in_place.unreported = false;
            in_place.reported_at = Some(now);
            out.push(Piece::Progress(in_place.latest.clone()));
        }
    }

    /// The output ended: whatever is left is a last line.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        self.after_cr = false;
        if !self.partial.is_empty() || self.in_place.is_some() {
            self.end_line(out);
        }
    }

    /// The text since the last line end or carriage return is a finished state of a line
    /// being rewritten.
    fn rewrite(&mut self, now: Instant, out: &mut Vec<Piece>) {
        if self.partial.is_empty() {
            return;
        }
        let state = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        let in_place =
            self.in_place.get_or_insert(InPlace { latest: String::new(), unreported: false, reported_at: None });
        in_place.latest = state;
        in_place.unreported = true;
        self.tick(now, out);
    }

    fn end_line(&mut self, out: &mut Vec<Piece>) {
        let in_place = self.in_place.take();
        if !self.partial.is_empty() {
            out.push(Piece::Line(String::from_utf8_lossy(&self.partial).into_owned()));
            self.partial.clear();
        } else if let Some(in_place) = in_place {
            // "…\r\n": the last state drawn is the line's final state.
            out.push(Piece::Line(in_place.latest));
        } else {
            out.push(Piece::Line(String::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], step: Duration) -> Vec<Piece> {
        let mut splitter = Splitter::new(Duration::from_secs(1));
        let start = Instant::now();
        let mut out = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            splitter.feed(chunk, start + step * index as u32, &mut out);
        }
        splitter.finish(&mut out);
        out
    }

    fn line(text: &str) -> Piece {
        Piece::Line(text.into())
    }

    #[test]
    fn lines_across_chunks_and_windows_endings() {
        let out = run(&[b"hel", b"lo\nwor", b"ld\r\n", b"\nlast"], Duration::ZERO);
        assert_eq!(out, [line("hello"), line("world"), line(""), line("last")]);
    }

    #[test]
    fn a_progress_bar_is_reported_at_most_once_a_second_then_its_final_state() {
        // 100 redraws 50 ms apart (5 s): the first, then one a second, then the final line.
        let mut chunks: Vec<Vec<u8>> = (0..100).map(|i| format!("\r{i:3}%|").into_bytes()).collect();
        chunks.push(b"\r100%|done\n".to_vec());
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let out = run(&chunks, Duration::from_millis(50));
        let progress = out.iter().filter(|piece| matches!(piece, Piece::Progress(_))).count();
        assert!((4..=6).contains(&progress), "{progress} progress reports: {out:?}");
        assert_eq!(out.last(), Some(&line("100%|done")));
        assert_eq!(out.iter().filter(|piece| matches!(piece, Piece::Line(_))).count(), 1);
    }

    #[test]
    fn a_stalled_bar_is_reported_by_tick() {
        let mut splitter = Splitter::new(Duration::from_secs(1));
        let start = Instant::now();
        let mut out = Vec::new();
        splitter.feed(b"\r10%\r20%\r30%", start, &mut out);
        assert_eq!(out, [Piece::Progress("10%".into())]);
        splitter.tick(start + Duration::from_millis(500), &mut out);
        assert_eq!(out.len(), 1, "not due yet");
        splitter.tick(start + Duration::from_millis(1100), &mut out);
        assert_eq!(out.last(), Some(&Piece::Progress("20%".into())));
        splitter.finish(&mut out);
        assert_eq!(out.last(), Some(&line("30%")));
    }

    /// The splitter as it was written first, a byte at a time: the reference for `feed`.
    fn feed_bytewise(splitter: &mut Splitter, bytes: &[u8], now: Instant, out: &mut Vec<Piece>) {
        for &byte in bytes {
            match byte {
                b'\n' => {
                    splitter.after_cr = false;
                    splitter.end_line(out);
                }
                b'\r' => {
                    if splitter.after_cr {
                        splitter.rewrite(now, out);
                    }
                    splitter.after_cr = true;
                }
                _ => {
                    if splitter.after_cr {
                        splitter.after_cr = false;
                        splitter.rewrite(now, out);
                    }
                    splitter.partial.push(byte);
                    if splitter.partial.len() >= MAX_LINE_BYTES {
                        splitter.end_line(out);
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn feeding_runs_of_text_splits_as_feeding_bytes(
            chunks in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        4 => proptest::strategy::Just(b'x'),
                        1 => proptest::strategy::Just(b'\n'),
                        1 => proptest::strategy::Just(b'\r'),
                        1 => proptest::prelude::any::<u8>(),
                    ],
                    0..64,
                ),
                0..12,
            ),
            long in proptest::prelude::any::<bool>(),
        ) {
            let start = Instant::now();
            let (mut fast, mut reference) = (Splitter::new(Duration::from_secs(1)), Splitter::new(Duration::from_secs(1)));
            let (mut fast_out, mut reference_out) = (Vec::new(), Vec::new());
            for (index, chunk) in chunks.iter().enumerate() {
                // Now and then a chunk that reaches past the line limit.
                let chunk = if long && index == 0 { [vec![b'y'; MAX_LINE_BYTES - 3], chunk.clone()].concat() } else { chunk.clone() };
                let now = start + Duration::from_millis(300) * index as u32;
                fast.feed(&chunk, now, &mut fast_out);
                feed_bytewise(&mut reference, &chunk, now, &mut reference_out);
            }
            fast.finish(&mut fast_out);
            reference.finish(&mut reference_out);
            proptest::prop_assert_eq!(fast_out, reference_out);
        }
    }

    #[test]
    fn runaway_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let out = run(&[&long, b"\n"], Duration::ZERO);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Piece::Line(text) if text.len() == MAX_LINE_BYTES));
    }
}
