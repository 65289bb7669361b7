//! The batch pipeline: stages over a batch of frames, their counters and drop reasons.

pub mod counters;
pub mod drop;

pub use counters::{Counters, Stage};
pub use drop::DropReason;
