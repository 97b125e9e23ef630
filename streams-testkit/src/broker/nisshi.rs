//! nisshi 0.7.0, the fallback test broker for machines without a JVM (docs/BROKER.md): a Rust
//! broker that serves Kafka's transaction API but has gaps, which the test proxy in front of it
//! patches ([`crate::proxy`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::bail;

use super::cache_dir;

/// The nisshi version the project pins (0.8 and later refuse transactions).
pub const NISSHI_VERSION: &str = "0.7.0";

/// The nisshi binary: `NISSHI_BIN`, or where `scripts/broker.sh install` puts it on a machine
/// without Java (or with `KSTREAMS_BROKER=nisshi`).
pub fn nisshi_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NISSHI_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = cache_dir()
        .join("broker")
        .join(format!("nisshi-{NISSHI_VERSION}"))
        .join("bin")
        .join("nisshi");
    if !bin.exists() {
        bail!(
            "the fallback broker nisshi is not installed at {}: run \
             `KSTREAMS_BROKER=nisshi scripts/broker.sh install` \
             (or set KAFKA_BOOTSTRAP_SERVERS to use another broker)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The command that runs nisshi on `port`, its data in `dir` (a sqlite file when `durable`,
/// else in memory).
pub(super) fn broker_command(bin: &Path, dir: &Path, port: u16, durable: bool) -> Command {
    let url = format!("tcp://127.0.0.1:{port}");
    let engine = if durable {
        "sqlite://nisshi.db"
    } else {
        "memory://nisshi/"
    };
    let mut cmd = Command::new(bin);
    cmd.arg("broker")
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", engine])
        // Kafka's default (3 s) only slows tests down: every group's first join waits it.
        .args(["--group-initial-rebalance-delay", "0s"])
        .current_dir(dir)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env(
            "RUST_LOG",
            std::env::var("NISSHI_LOG").unwrap_or("warn".into()),
        );
    cmd
}
