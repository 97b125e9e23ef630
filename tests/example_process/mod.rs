//! Running an example's built binary from a broker test: start it, read its output, wait
//! until it processes.

use std::io::BufRead;
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// The example `name`'s binary, built by `cargo test` beside the test binaries.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} not built (cargo test builds examples)",
        bin.display()
    );
    bin
}

/// Runs example `name` with `args`; returns the child once it printed that it runs, and a
/// channel of its later output lines (each also echoed to stderr).
pub fn run_example<S: AsRef<std::ffi::OsStr>>(
    name: &str,
    args: &[S],
) -> (std::process::Child, Receiver<String>) {
    let mut child = std::process::Command::new(example_binary(name))
        .args(args)
        .env(
            "KAFKA_BOOTSTRAP_SERVERS",
            streams_testkit::bootstrap_servers(),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            eprintln!("[example] {line}");
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(line) if line.starts_with("running") => return (child, rx),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the example did not start: {e}");
            }
        }
    }
}

/// Waits until a summary line shows `counter` (the text before the number, such as
/// `"records in "`) above zero, or, checked at each summary line, `all_done` (the group has
/// committed the whole input: a run after a kill may find nothing left to process, and would
/// otherwise wait for ever).
pub fn wait_processing(lines: &Receiver<String>, counter: &str, all_done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(180))
            .expect("the example processed nothing");
        let processed = line
            .split(counter)
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse::<u64>().ok());
        if processed.is_some_and(|n| n > 0) || all_done() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the example neither processed nor finished the input: {line}"
        );
    }
}

/// The broker tests' run of example `name`: started with `args(first_extra)` (say
/// `--generate N`), SIGKILLed `kills` times at a random point once its summary shows `counter`
/// above zero (or once the whole input is committed), each time restarted with `args(&[])`; the last run goes on until consumer group
/// `group` has committed the whole of `input`, then gets SIGTERM and must exit cleanly.
pub fn kill_then_finish(
    name: &str,
    args: impl Fn(&[&str]) -> Vec<String>,
    first_extra: &[&str],
    kills: usize,
    counter: &str,
    (group, input): (&str, &str),
) {
    use rand::Rng;
    use streams_testkit::kafka::{committed_offsets, read_to_end, Isolation};
    let bootstrap = streams_testkit::bootstrap_servers();
    let mut rng = rand::rng();
    for kill in 0..kills {
        let extra = if kill == 0 { first_extra } else { &[] };
        let (mut child, lines) = run_example(name, &args(extra));
        let all_done = || {
            let total = read_to_end(
                &bootstrap,
                input,
                Isolation::ReadCommitted,
                Duration::from_secs(60),
            )
            .map_or(i64::MAX, |r| r.len() as i64);
            let done: i64 = committed_offsets(&bootstrap, group, input)
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.unwrap_or(0))
                .sum();
            done >= total
        };
        wait_processing(&lines, counter, all_done);
        let after = Duration::from_millis(rng.random_range(0..1500));
        std::thread::sleep(after); // the random kill point, while it processes
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!(
            "kill {} {after:?} after its first processed records",
            kill + 1
        );
    }
    let (mut last, _lines) = run_example(name, &args(&[]));
    let total = read_to_end(
        &bootstrap,
        input,
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    .len() as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let done: i64 = committed_offsets(&bootstrap, group, input)
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap_or(0))
            .sum();
        if done >= total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "input not consumed: {done} of {total}"
        );
        std::thread::sleep(Duration::from_millis(200)); // polling the group's offsets
    }
    // SAFETY: signals our own child process.
    unsafe {
        libc::kill(last.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(
        last.wait().unwrap().success(),
        "the last run exits cleanly on SIGTERM"
    );
}
