//! Child processes for crash tests: the test binary runs itself again in a child mode, and the
//! parent waits for lines it prints, kills it with SIGKILL, or asks it to stop.
//!
//! The parent calls [`ChildProcess::spawn`] with the name of a test function; that function
//! checks [`child_mode`] first and, when set, plays the child: it prints marker lines and calls
//! [`wait_for_stop_request`] to block until the parent closes its stdin.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The environment variable that carries the child's role and arguments.
pub const CHILD_ENV: &str = "KSTREAMS_TEST_CHILD";

/// The child's arguments when this process is a child, else `None`.
pub fn child_mode() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// In a child: blocks until the parent closes stdin (or asks to stop).
pub fn wait_for_stop_request() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// A child process started from the current test binary.
pub struct ChildProcess {
    child: Child,
    lines: Receiver<String>,
    name: String,
}

impl ChildProcess {
    /// Runs test `test_name` of the current binary as a child with `CHILD_ENV=args` and the
    /// extra environment `env`. It dies with the parent.
    pub fn spawn(
        name: &str,
        test_name: &str,
        args: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        // --include-ignored: the child plays its role also for a test that is ignored by
        // default and was run on purpose.
        cmd.args([
            "--exact",
            test_name,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = crate::broker::spawn_tied_to_process(cmd)
            .with_context(|| format!("spawning child {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = channel();
        let label = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("KSTREAMS_TEST_CHILD_ECHO").is_some() {
                    eprintln!("[{label}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildProcess {
            child,
            lines: rx,
            name: name.to_string(),
        })
    }

    /// Waits for a stdout line containing `marker` and returns it.
    pub fn wait_for_line(&mut self, marker: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "child {}: no line with {marker:?} within {timeout:?}",
                    self.name
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "child {} exited ({status}) before printing {marker:?}",
                        self.name
                    )
                }
            }
        }
    }

    /// The lines the child printed that no [`wait_for_line`](Self::wait_for_line) has read
    /// yet, at most the last `limit` of them (for a failing test's report).
    pub fn unread_lines(&mut self, limit: usize) -> Vec<String> {
        let mut lines: Vec<String> = self.lines.try_iter().collect();
        let skip = lines.len().saturating_sub(limit);
        lines.drain(..skip);
        lines
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Closes the child's stdin (its stop request) and waits up to `timeout` for it to exit.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!(
                    "child {} did not stop within {timeout:?}; killed",
                    self.name
                );
            }
            // Polling a child's exit status: there is no portable blocking wait with a timeout.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
