//! Apache Kafka as the test broker: a single node that is both broker and KRaft controller, run
//! from the jars `scripts/broker.sh install` puts in the cache (docs/BROKER.md).
//!
//! A launch writes `server.properties` and `log4j2.properties` into the broker's directory,
//! formats its log directory once (`kafka.tools.StorageTool format`, with a static quorum of
//! one voter), and starts `kafka.Kafka` with `java` directly, so that the process the harness
//! holds is the JVM: SIGKILL, SIGSTOP and the parent-death signal reach the broker itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::cache_dir;

/// The Apache Kafka version the project pins; `scripts/common.sh` and `scripts/kafka/pom.xml`
/// name the same (a unit test checks).
pub const KAFKA_VERSION: &str = "4.4.0";

/// The broker's logging: warnings and errors on standard output (the harness's `broker.log`).
const LOG4J2: &str = include_str!("../../../scripts/kafka/log4j2.properties");

/// Where the broker's jars are: `KSTREAMS_KAFKA_LIBS` (say, the `libs/` of a Kafka
/// distribution), or where `scripts/broker.sh install` puts them.
pub fn kafka_libs() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KSTREAMS_KAFKA_LIBS") {
        return Ok(PathBuf::from(dir));
    }
    let home = cache_dir().join(format!("kafka-{KAFKA_VERSION}"));
    let libs = home.join("libs");
    if !home.join("installed").exists() {
        bail!(
            "Apache Kafka {KAFKA_VERSION} is not installed in {}: run `scripts/broker.sh install` \
             (it needs Java 17 and Maven), or set KAFKA_BOOTSTRAP_SERVERS to use another broker",
            home.display()
        );
    }
    Ok(libs)
}

/// The `java` to run: `$JAVA_HOME/bin/java`, or the one on the `PATH`.
pub fn java_binary() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        let java = Path::new(&home).join("bin").join("java");
        if java.is_file() {
            return Some(java);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("java"))
        .find(|java| java.is_file())
}

/// The ports and directory of one broker, and the settings a test adds.
pub(super) struct KafkaNode<'a> {
    pub dir: &'a Path,
    pub port: u16,
    pub controller_port: u16,
    pub extra: &'a [(String, String)],
}

impl KafkaNode<'_> {
    /// The broker's configuration: one node, loopback only, settings for tests.
    pub fn server_properties(&self) -> String {
        let KafkaNode {
            dir,
            port,
            controller_port,
            extra,
        } = self;
        let data = dir.join("data");
        let mut text = format!(
            "# Written by streams-testkit for each start; see docs/BROKER.md.\n\
             process.roles=broker,controller\n\
             node.id=1\n\
             # A static quorum of one voter: `format` needs no --standalone, nothing can change.\n\
             controller.quorum.voters=1@127.0.0.1:{controller_port}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             log.dirs={data}\n\
             # One broker: internal topics with replication 1 and one partition each (Kafka's 50\n\
             # partitions would cost seconds on the first group and the first transaction).\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             default.replication.factor=1\n\
             min.insync.replicas=1\n\
             num.partitions=1\n\
             # The runtime and the tests create every topic they use.\n\
             auto.create.topics.enable=false\n\
             # No wait before a group's first rebalance; sessions as short as tests want.\n\
             group.initial.rebalance.delay.ms=0\n\
             group.min.session.timeout.ms=1000\n\
             # A transaction past its timeout is aborted within a second, not ten.\n\
             transaction.abort.timed.out.transaction.cleanup.interval.ms=1000\n\
             # Tests and benchmarks write event times in the past (1970, 2023): no deletion by\n\
             # time, and no cleaner (it would also delete old segments of compact,delete window\n\
             # changelogs, and compaction would make changelog contents depend on timing).\n\
             log.retention.ms=-1\n\
             log.cleaner.enable=false\n\
             # A broker paused by a test (SIGSTOP) must not fence itself when it resumes.\n\
             broker.session.timeout.ms=30000\n\
             # Two cores.\n\
             num.network.threads=2\n\
             num.io.threads=4\n\
             num.recovery.threads.per.data.dir=1\n\
             background.threads=4\n",
            data = data.display(),
        );
        if !extra.is_empty() {
            text.push_str("# Settings of this test\n");
            for (k, v) in extra.iter() {
                text.push_str(&format!("{k}={v}\n"));
            }
        }
        text
    }

    /// Writes the configuration files, and formats the log directory when it is new.
    pub fn prepare(&self, java: &Path, libs: &Path, log: &fs::File) -> anyhow::Result<()> {
        let config = self.dir.join("server.properties");
        fs::write(&config, self.server_properties())
            .with_context(|| format!("writing {}", config.display()))?;
        fs::write(self.dir.join("log4j2.properties"), LOG4J2)
            .with_context(|| format!("writing log4j2.properties in {}", self.dir.display()))?;
        if self.dir.join("data").join("meta.properties").exists() {
            return Ok(());
        }
        let status = self
            .java(java, libs)
            .arg("kafka.tools.StorageTool")
            .arg("format")
            .args(["--cluster-id", &cluster_id()])
            .arg("--config")
            .arg(&config)
            .arg("--ignore-formatted")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .status()
            .with_context(|| format!("running {}", java.display()))?;
        if !status.success() {
            bail!("formatting the broker's log directory failed ({status})");
        }
        Ok(())
    }

    /// The command that runs the broker (Kafka's own JVM settings: a 1 GiB heap and G1 with
    /// short pauses, as `kafka-server-start.sh` and `kafka-run-class.sh` set them).
    pub fn broker_command(&self, java: &Path, libs: &Path) -> Command {
        let mut cmd = self.java(java, libs);
        cmd.args([
            "-Xms1g",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "kafka.Kafka",
        ])
        .arg(self.dir.join("server.properties"));
        cmd
    }

    fn java(&self, java: &Path, libs: &Path) -> Command {
        let mut cmd = Command::new(java);
        cmd.arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ))
            .arg(format!(
                "-Dkafka.logs.dir={}",
                self.dir.join("logs").display()
            ))
            .current_dir(self.dir)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS");
        cmd
    }
}

/// A new cluster id: 16 random bytes in URL-safe base64 without padding (22 characters), as
/// `kafka-storage.sh random-uuid` prints (without starting a JVM for it); never starting with
/// `-`, which the storage tool's argument parser would take for an option (Kafka's
/// `Uuid.randomUuid` draws again too).
fn cluster_id() -> String {
    loop {
        let id = encoded_random_id();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn encoded_random_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 16] = rand::random();
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The storage tool's argument parser takes a value starting with `-` for an option: the
    /// format failed with its usage text about once in 64 starts (seen in a test run), as Kafka's
    /// own `Uuid.randomUuid` avoids by drawing again.
    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        for _ in 0..2000 {
            let id = cluster_id();
            assert!(!id.starts_with('-'), "{id}");
        }
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        for _ in 0..100 {
            let id = cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    /// The version pinned here is the one the install script fetches.
    #[test]
    fn the_scripts_pin_the_same_kafka_version() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let common = fs::read_to_string(root.join("scripts/common.sh")).unwrap();
        assert!(
            common.contains(&format!("KAFKA_VERSION={KAFKA_VERSION}\n")),
            "scripts/common.sh does not pin Kafka {KAFKA_VERSION}"
        );
        let pom = fs::read_to_string(root.join("scripts/kafka/pom.xml")).unwrap();
        assert!(
            pom.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")),
            "scripts/kafka/pom.xml does not pin Kafka {KAFKA_VERSION}"
        );
    }

    #[test]
    fn extra_settings_come_last_so_that_they_win() {
        let dir = PathBuf::from("/tmp/x");
        let extra = vec![("log.retention.ms".to_string(), "1000".to_string())];
        let node = KafkaNode {
            dir: &dir,
            port: 1,
            controller_port: 2,
            extra: &extra,
        };
        let text = node.server_properties();
        assert!(text.contains("listeners=PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2"));
        assert!(text.ends_with("log.retention.ms=1000\n"));
    }
}
