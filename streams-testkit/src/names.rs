//! Unique names for topics, groups and transactional ids.

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test, test process or earlier run will use: `<prefix>-<pid>-<n>-<random>`.
///
/// Tests run against a shared broker (and, with `KAFKA_BOOTSTRAP_SERVERS`, against a broker that
/// outlives them), so every topic, group and transactional id a test creates must be its own.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt: u32 = rand::random();
    format!("{prefix}-{}-{n}-{salt:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ() {
        let a = unique("t");
        let b = unique("t");
        assert_ne!(a, b);
        assert!(a.starts_with("t-"));
    }
}
