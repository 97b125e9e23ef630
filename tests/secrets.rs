//! Secrets in client settings (issue 15, item 5): every librdkafka setting reaches the clients
//! (SASL included), and no password appears in `Debug` output, in the logs (ours and
//! librdkafka's, at trace level with librdkafka's configuration dump on), in errors, or in the
//! topology description.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kstreams::core::serde::Utf8;
use kstreams::core::{KafkaStreams, Sink, Source, State, StreamsConfig, TopologyBuilder};
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::kafka::{
    create_topic, idempotent_producer, read_to_end, send_retrying, Isolation,
};
use streams_testkit::{bootstrap_servers, error_chain, unique};

const PASSWORD: &str = "hunter2-do-not-print";

/// Everything logged, from every thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn client_settings_pass_through_and_passwords_are_never_printed() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("sec-in"), unique("sec-out"), unique("sec-app"));
    create_topic(&bootstrap, &input, 1, &[]).unwrap();
    create_topic(&bootstrap, &output, 1, &[]).unwrap();
    let topology = || {
        TopologyBuilder::new()
            .add_source("in", Source::new([input.as_str()], Utf8, Utf8))
            .add_sink("out", Sink::new(output.as_str(), Utf8, Utf8), ["in"])
            .build()
            .unwrap()
    };
    let config = |app: &str| {
        StreamsConfig::new(app, &bootstrap)
            .state_dir(std::env::temp_dir().join(unique("sec-state")))
            .set("sasl.username", "streams")
            .set("sasl.password", PASSWORD)
            // librdkafka's own dump of each client's configuration, at debug level.
            .set("debug", "conf,generic")
    };

    // Debug output.
    let debug = format!("{:?}", config(&app));
    assert!(!debug.contains(PASSWORD), "{debug}");
    assert!(
        debug.contains("\"sasl.password\": \"[redacted]\""),
        "{debug}"
    );
    assert!(debug.contains("\"sasl.username\": \"streams\""), "{debug}");

    // The settings reach the clients: a SASL mechanism librdkafka does not know stops the
    // start with librdkafka's own complaint, which names it (and not the password).
    let streams = KafkaStreams::new(
        topology(),
        config(&unique("sec-bad"))
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", "NO-SUCH-MECHANISM"),
    )
    .unwrap();
    let e = streams
        .start()
        .expect_err("an unknown SASL mechanism must stop the start");
    let m = error_chain(&e);
    eprintln!("start with an unknown SASL mechanism: {m}");
    assert!(m.contains("NO-SUCH-MECHANISM"), "{m}");
    assert!(!m.contains(PASSWORD), "{m}");
    assert_eq!(streams.state(), State::Created);

    // A whole run (plaintext, so the SASL settings are carried but unused): start, process,
    // close, with every client's configuration dumped by librdkafka.
    let streams = KafkaStreams::new(topology(), config(&app)).unwrap();
    streams.start().unwrap();
    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..10 {
        send_retrying(
            &p,
            BaseRecord::to(&input).key("k").payload(&format!("v{i}")),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while read_to_end(
        &bootstrap,
        &output,
        Isolation::ReadCommitted,
        Duration::from_secs(30),
    )
    .unwrap()
    .len()
        < 10
    {
        assert!(std::time::Instant::now() < deadline, "output not written");
        std::thread::sleep(Duration::from_millis(200)); // polling the output topic
    }
    assert!(streams.close(Duration::from_secs(60)));
    let description = format!(
        "{}\n{}",
        streams_description(&topology()),
        topology().describe().to_mermaid()
    );
    assert!(!description.contains(PASSWORD));

    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let dumped = logs.matches("sasl.password").count();
    eprintln!(
        "captured {} bytes of logs; librdkafka's configuration dumps name sasl.password {dumped} times, as: {:?}",
        logs.len(),
        logs.lines().find(|l| l.contains("sasl.password")).map(|l| l.trim())
    );
    assert!(
        dumped > 0,
        "librdkafka's configuration dump was captured (else this test proves nothing about it)"
    );
    assert!(
        !logs.contains(PASSWORD),
        "the password appears in the logs: {}",
        logs.lines()
            .filter(|l| l.contains(PASSWORD))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn streams_description(t: &kstreams::core::Topology) -> String {
    t.describe().to_string()
}
