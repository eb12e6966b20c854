//! The queue's rules on top of `store::Store`: which events may reach a claimed run
//! (fencing by attempt). Lost-worker sweeps and retry policy join here (issue 6).
//! Knows nothing about HTTP, clap or a particular database.

pub mod fence;
