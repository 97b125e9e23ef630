//! Runs the project's test broker in the foreground until SIGTERM or SIGINT, for scripts and
//! examples (`scripts/broker.sh start` runs it in the background).
//!
//! ```text
//! kstreams-test-broker [--broker kafka|nisshi] [--durable] [--port N] [--data-dir DIR]
//!                      [--ready-file FILE]
//! ```
//!
//! The broker is Apache Kafka unless `--broker` or `KSTREAMS_BROKER` says nisshi (or no `java`
//! is found). When it answers, this prints `bootstrap.servers=<host:port>` and writes the
//! address to the ready file. On SIGTERM or SIGINT the broker shuts down in order.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use streams_testkit::{BrokerKind, BrokerOptions, ManagedBroker};

const USAGE: &str = "kstreams-test-broker [--broker kafka|nisshi] [--durable] [--port N] \
                     [--data-dir DIR] [--ready-file FILE]";

fn main() -> anyhow::Result<()> {
    // Block the signals before any thread starts, so that every thread inherits the mask and
    // `sigwait` below receives them.
    let signals = termination_signals();
    let mut options = BrokerOptions::from_env();
    let mut ready_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--broker" => {
                options.kind = Some(match value()?.as_str() {
                    "kafka" => BrokerKind::Kafka,
                    "nisshi" => BrokerKind::Nisshi,
                    other => bail!("--broker: kafka or nisshi, not {other}"),
                })
            }
            "--durable" => options.durable = true,
            "--port" => options.port = Some(value()?.parse().context("--port")?),
            "--data-dir" => options.data_dir = Some(value()?.into()),
            "--ready-file" => ready_file = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}; usage: {USAGE}"),
        }
    }
    let started = Instant::now();
    let mut broker = ManagedBroker::start(options)?;
    let servers = broker.bootstrap_servers();
    println!(
        "bootstrap.servers={servers} ({} ready in {:.1} s)",
        broker.kind().name(),
        started.elapsed().as_secs_f64()
    );
    if let Some(file) = ready_file {
        std::fs::write(&file, format!("{servers}\n"))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    let mut sig = 0;
    // SAFETY: `signals` is an initialised set; `sig` is a valid out-pointer.
    unsafe { libc::sigwait(&signals, &mut sig) };
    eprintln!("signal {sig}: stopping the test broker");
    broker.stop(Duration::from_secs(20));
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
