//! The queue's rules, pure and below the store: who may send which events (`authority`, by
//! token scope), which events may reach a claimed run (`fence`, by attempt) and what
//! becomes of a run whose worker falls silent (`lease`), and of a run awaiting a person's
//! review (`review`), and of a run that spent its budget (`budget`). The store applies `fence` and
//! `lease::is_sweep_record` to every event; `serve` judges `authority`; the sweeper that
//! applies the lease is `crate::sweep`, above the store.
//! No I/O, and nothing of HTTP, clap or a particular database.

pub mod authority;
pub mod budget;
pub mod fence;
pub mod lease;
pub mod retry;
pub mod review;
pub mod stall;
