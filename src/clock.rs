//! The wall clock, read in one place. The core takes `now` as an argument
//! and never reads a clock itself; the HTTP adapter and the sweeper read
//! this one and pass it in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
