//! The queue's rules on top of `store::Store`: who may send which events (`authority`, by
//! token scope), which events may reach a claimed run (`fence`, by attempt) and what
//! becomes of a run whose worker falls silent (`lease`).
//! Knows nothing about HTTP, clap or a particular database.

pub mod authority;
pub mod fence;
pub mod lease;
