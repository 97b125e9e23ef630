//! The optional HTTP endpoint (issue 14, item 2, without interactive queries yet), against the
//! real broker: `/health` says 503 and the state until the instance runs, then 200; `/metrics`
//! parses as Prometheus text and counts the records processed; `/topology` gives the
//! description and its Mermaid form; unknown paths and other methods get 4xx; the endpoint
//! stops with the instance.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kstreams::core::{KafkaStreams, StreamsConfig};
use kstreams::dsl::StreamsBuilder;
use rdkafka::producer::{BaseRecord, Producer};
use streams_testkit::kafka::{
    consume_until, create_topic, idempotent_producer, send_retrying, Isolation,
};
use streams_testkit::{bootstrap_servers, unique};

const LONG: Duration = Duration::from_secs(120);

/// One HTTP/1.1 request; returns the status code and the body.
fn http(address: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

#[test]
fn the_endpoint_serves_health_metrics_and_topology() {
    const N: usize = 40;
    let bootstrap = bootstrap_servers();
    let (input, output, app) = (unique("h-in"), unique("h-out"), unique("h-app"));
    create_topic(&bootstrap, &input, 2, &[]).unwrap();
    create_topic(&bootstrap, &output, 2, &[]).unwrap();
    let builder = StreamsBuilder::new();
    builder.stream::<String, String>(&input).to(&output);
    let config = StreamsConfig::new(&app, &bootstrap)
        .state_dir(std::env::temp_dir().join(unique("h-state")))
        .http_endpoint("127.0.0.1:0".parse().unwrap());
    let streams = KafkaStreams::new(builder.build().unwrap(), config).unwrap();
    assert_eq!(streams.http_address(), None, "not started");
    streams.start().unwrap();
    let address = streams.http_address().expect("listening once started");

    // Not ready until running; then ready.
    let (status, body) = http(address, "GET", "/health").unwrap();
    assert!(
        (status == 503 && body.trim() == "Rebalancing")
            || (status == 200 && body.trim() == "Running"),
        "{status} {body}"
    );
    let deadline = Instant::now() + LONG;
    while http(address, "GET", "/health").unwrap() != (200, "Running\n".into()) {
        assert!(Instant::now() < deadline, "never ready");
        // Polling the endpoint, as a load balancer's health check does.
        std::thread::sleep(Duration::from_millis(50));
    }

    let p = idempotent_producer(&bootstrap).unwrap();
    for i in 0..N {
        let key = format!("k{i}");
        send_retrying(&p, BaseRecord::to(&input).key(&key).payload("v")).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    consume_until(&bootstrap, &output, Isolation::ReadCommitted, LONG, |got| {
        got.len() >= N
    })
    .unwrap();

    let (status, metrics) = http(address, "GET", "/metrics").unwrap();
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .expect("the metrics text parses");
    let processed: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "kstreams_task_process_records_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(processed, N as f64, "{metrics}");

    let (status, topology) = http(address, "GET", "/topology").unwrap();
    assert_eq!(status, 200);
    assert!(topology.contains(&input), "{topology}");
    assert!(
        topology.contains("flowchart"),
        "the Mermaid form: {topology}"
    );

    let (status, body) = http(address, "GET", "/nothing-here").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/metrics"), "says what is served: {body}");
    let (status, _) = http(address, "POST", "/metrics").unwrap();
    assert_eq!(status, 405);

    assert!(streams.close(Duration::from_secs(60)));
    assert!(
        http(address, "GET", "/health").is_err(),
        "the endpoint stops with the instance"
    );
}
