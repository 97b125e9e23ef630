//! # streams-testkit
//!
//! Test support shared by every test, example driver and benchmark that needs a Kafka broker.
//!
//! - [`broker`]: where the broker is. `KAFKA_BOOTSTRAP_SERVERS` wins when set (Apache Kafka,
//!   Redpanda, a cloud cluster); otherwise the project's own test broker (nisshi 0.7.0, see
//!   `docs/BROKER.md`) is started on a free loopback port, once per test process, and killed
//!   with the process.
//! - [`names`]: unique topic, group and transactional-id names, so tests never share state.
//! - [`kafka`]: small helpers over rdkafka (admin, produce, read a topic to the end).

pub mod broker;
pub mod child;
pub mod kafka;
pub mod names;
pub mod proxy;

pub use broker::{bootstrap_servers, BrokerKind, BrokerOptions, ManagedBroker};
pub use names::unique;

/// Installs a tracing subscriber for tests, filtered by `RUST_LOG` (nothing when unset). Safe
/// to call many times; the broker harness calls it.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// An error and its causes, as one line (`error: cause: cause …`), for asserting on messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        m.push_str(": ");
        m.push_str(&s.to_string());
        source = s.source();
    }
    m
}
