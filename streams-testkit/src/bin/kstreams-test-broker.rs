//! Runs the project's test broker in the foreground until SIGTERM or SIGINT, for scripts and
//! examples (`scripts/broker.sh start` runs it in the background).
//!
//! ```text
//! kstreams-test-broker [--engine memory|sqlite] [--port N] [--data-dir DIR] [--ready-file FILE]
//! ```
//!
//! When the broker answers, it prints `bootstrap.servers=<host:port>` and writes the address to
//! the ready file.

use std::path::PathBuf;

use anyhow::{bail, Context};
use streams_testkit::{BrokerOptions, ManagedBroker, StorageEngine};

fn main() -> anyhow::Result<()> {
    // Block the signals before any thread starts, so that every thread inherits the mask and
    // `sigwait` below receives them.
    let signals = termination_signals();
    let mut options = BrokerOptions::default();
    let mut ready_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--engine" => {
                options.engine = match value()?.as_str() {
                    "memory" => StorageEngine::Memory,
                    "sqlite" => StorageEngine::Sqlite,
                    other => bail!("--engine: memory or sqlite, not {other}"),
                }
            }
            "--port" => options.port = Some(value()?.parse().context("--port")?),
            "--data-dir" => options.data_dir = Some(value()?.into()),
            "--ready-file" => ready_file = Some(value()?.into()),
            "-h" | "--help" => {
                println!(
                    "kstreams-test-broker [--engine memory|sqlite] [--port N] [--data-dir DIR] \
                     [--ready-file FILE]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other}; see --help"),
        }
    }
    let broker = ManagedBroker::start(options)?;
    let servers = broker.bootstrap_servers();
    println!("bootstrap.servers={servers}");
    if let Some(file) = ready_file {
        std::fs::write(&file, format!("{servers}\n"))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let mut sig = 0;
    // SAFETY: `signals` is an initialised set; `sig` is a valid out-pointer.
    unsafe { libc::sigwait(&signals, &mut sig) };
    eprintln!("signal {sig}: stopping the test broker");
    drop(broker);
    Ok(())
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigset functions on a local set that sigemptyset initialises.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}
