//! The batch pipeline (to be written).
