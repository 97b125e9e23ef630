//! `examples/smart_hotel.rs` against an oracle written here from the example's rules (its
//! module docs): on the `TopologyTestDriver` over random room events (late ones, ignored
//! check-ins and check-outs, malformed values), and as the built binary against the broker,
//! killed twice while it processes.

#[allow(dead_code)]
#[path = "../examples/smart_hotel.rs"]
mod smart_hotel;

mod example_process;

use std::collections::BTreeMap;

use kstreams::core::handlers::DeadLetterTopic;
use kstreams::core::serde::{Json, RawBytes, Utf8};
use kstreams::core::TopologyTestDriver;
use rand::{Rng, SeedableRng};
use smart_hotel::{
    build_topology, CleaningRequest, Command, Counters, HvacCommand, Kind, RoomEvent, Topics,
};

const FIFTEEN_MINUTES: i64 = 900_000;

/// What the oracle expects from one partition's events, in the order they are read.
#[derive(Debug, Default)]
struct Expected {
    /// Heating commands, in the order they are emitted.
    hvac: Vec<HvacCommand>,
    /// Cleaning requests, in order.
    cleaning: Vec<CleaningRequest>,
    late: u64,
    ignored: u64,
}

/// The rules, from the example's module docs: per partition, stream time is the largest `ts`
/// read; when it moves forward, every checked-in room with heating on and no motion, door or
/// check-in for 15 minutes of it gets `heating_off` (by deadline, then room); then the event
/// is applied.
fn oracle(events: &[RoomEvent]) -> Expected {
    #[derive(Default)]
    struct State {
        checked_in: bool,
        heating_off: bool,
        latest: Option<i64>,
        idle_since: i64,
    }
    let mut rooms: BTreeMap<String, State> = BTreeMap::new();
    let mut out = Expected::default();
    let mut stream_time = i64::MIN;
    for e in events {
        if e.ts > stream_time {
            stream_time = e.ts;
            let mut due: Vec<(i64, String)> = rooms
                .iter()
                .filter(|(_, s)| s.checked_in && !s.heating_off)
                .map(|(r, s)| (s.idle_since + FIFTEEN_MINUTES, r.clone()))
                .filter(|(at, _)| *at <= stream_time)
                .collect();
            due.sort();
            for (at, room) in due {
                rooms.get_mut(&room).unwrap().heating_off = true;
                out.hvac.push(HvacCommand {
                    room_id: room,
                    command: Command::HeatingOff,
                    ts: at,
                });
            }
        }
        let s = rooms.entry(e.room_id.clone()).or_default();
        if s.latest.is_some_and(|l| e.ts < l) {
            out.late += 1;
            continue;
        }
        s.latest = Some(e.ts);
        match e.kind {
            Kind::CheckIn if s.checked_in => out.ignored += 1,
            Kind::CheckIn => {
                s.checked_in = true;
                s.idle_since = e.ts;
            }
            Kind::CheckOut if !s.checked_in => out.ignored += 1,
            Kind::CheckOut => {
                s.checked_in = false;
                out.cleaning.push(CleaningRequest {
                    room_id: e.room_id.clone(),
                    checked_out_at: e.ts,
                });
            }
            Kind::Motion | Kind::Door if s.checked_in => {
                if s.heating_off {
                    s.heating_off = false;
                    out.hvac.push(HvacCommand {
                        room_id: e.room_id.clone(),
                        command: Command::HeatingOn,
                        ts: e.ts,
                    });
                }
                s.idle_since = e.ts;
            }
            Kind::Motion | Kind::Door => {}
        }
    }
    out
}

/// Random events of `rooms` rooms: time moves forward in steps of up to `step` ms, a few
/// events are late by up to 30 minutes.
fn random_events(rng: &mut impl Rng, n: usize, rooms: usize, step: i64) -> Vec<RoomEvent> {
    let mut ts = 1_000_000_i64;
    (0..n)
        .map(|_| {
            ts += rng.random_range(0..step);
            let kind = match rng.random_range(0..100) {
                0..=14 => Kind::CheckIn,
                15..=24 => Kind::CheckOut,
                25..=69 => Kind::Motion,
                _ => Kind::Door,
            };
            let late = rng.random_bool(0.05);
            RoomEvent {
                room_id: format!("r{}", rng.random_range(0..rooms)),
                kind,
                ts: if late {
                    (ts - rng.random_range(0..1_800_000)).max(0)
                } else {
                    ts
                },
            }
        })
        .collect()
}

#[test]
fn heating_and_cleaning_follow_the_rules_on_random_events() {
    let topics = Topics::default();
    let counters = Counters::default();
    let driver = TopologyTestDriver::with_options(
        build_topology(&topics, &counters).unwrap(),
        "hotel-test",
        0,
        Box::new(DeadLetterTopic("dlq".into())),
    )
    .unwrap();
    let input = driver.input_topic::<String, Vec<u8>>(&topics.room_events, Utf8, RawBytes);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x407e1);
    // Steps up to 5 minutes over 8 rooms: idle spells of 15 minutes and more are common.
    let events = random_events(&mut rng, 5_000, 8, 300_000);
    let malformed: [&[u8]; 4] = [
        b"{\"room_id\": \"r1\", \"kind\": \"teleport\", \"ts\": 5}",
        b"{\"room_id\": \"r1\", \"ts\": 5}",
        b"not json",
        b"",
    ];
    for (i, e) in events.iter().enumerate() {
        if i % 500 == 250 {
            let bad = malformed[(i / 500) % malformed.len()];
            input
                .pipe_at(e.room_id.clone(), bad.to_vec(), e.ts)
                .unwrap();
        }
        input
            .pipe_at(e.room_id.clone(), serde_json::to_vec(e).unwrap(), e.ts)
            .unwrap();
    }
    let want = oracle(&events);
    let hvac = driver
        .output_topic::<String, HvacCommand>(
            &topics.hvac_commands,
            Utf8,
            Json::<HvacCommand>::default(),
        )
        .read_records()
        .unwrap();
    let cleaning = driver
        .output_topic::<String, CleaningRequest>(
            &topics.cleaning_requests,
            Utf8,
            Json::<CleaningRequest>::default(),
        )
        .read_records()
        .unwrap();
    let offs = want
        .hvac
        .iter()
        .filter(|c| c.command == Command::HeatingOff)
        .count();
    eprintln!(
        "smart hotel: {} events, heating commands {} (expected {}, of which heating_off {offs}), \
         cleaning requests {} (expected {}), late {} (expected {}), ignored {} (expected {})",
        events.len(),
        hvac.len(),
        want.hvac.len(),
        cleaning.len(),
        want.cleaning.len(),
        counters.late.load(std::sync::atomic::Ordering::Relaxed),
        want.late,
        counters.ignored.load(std::sync::atomic::Ordering::Relaxed),
        want.ignored
    );
    // Keys are the rooms; record timestamps are the commands' and requests' times.
    for r in &hvac {
        assert_eq!(r.key(), &r.value().room_id);
        assert_eq!(r.timestamp(), r.value().ts);
    }
    for r in &cleaning {
        assert_eq!(r.key(), &r.value().room_id);
        assert_eq!(r.timestamp(), r.value().checked_out_at);
    }
    let hvac: Vec<HvacCommand> = hvac.into_iter().map(|r| r.value().clone()).collect();
    let cleaning: Vec<CleaningRequest> = cleaning.into_iter().map(|r| r.value().clone()).collect();
    assert_eq!(hvac, want.hvac);
    assert_eq!(cleaning, want.cleaning);
    assert_eq!(
        counters.late.load(std::sync::atomic::Ordering::Relaxed),
        want.late
    );
    assert_eq!(
        counters.ignored.load(std::sync::atomic::Ordering::Relaxed),
        want.ignored
    );
    // The input exercises every rule.
    assert!(offs > 50 && want.hvac.len() - offs > 50, "{offs}");
    assert!(want.cleaning.len() > 50 && want.late > 50 && want.ignored > 50);
    let dead = driver
        .output_topic::<String, Vec<u8>>("dlq", Utf8, RawBytes)
        .read_values()
        .unwrap();
    assert_eq!(dead.len(), events.len() / 500);
}

#[test]
fn an_idle_spell_of_exactly_fifteen_minutes_switches_heating_off_before_the_event_ending_it() {
    let topics = Topics::default();
    let counters = Counters::default();
    let driver = TopologyTestDriver::new(build_topology(&topics, &counters).unwrap()).unwrap();
    let input = driver.input_topic::<String, RoomEvent>(
        &topics.room_events,
        Utf8,
        Json::<RoomEvent>::default(),
    );
    let ev = |room: &str, kind, ts| RoomEvent {
        room_id: room.into(),
        kind,
        ts,
    };
    for e in [
        ev("a", Kind::CheckIn, 0),
        ev("b", Kind::CheckIn, 1_000),
        ev("a", Kind::Motion, 60_000),
        // 15 minutes after a's motion, exactly: a's heating goes off, then on again.
        ev("a", Kind::Door, 60_000 + FIFTEEN_MINUTES),
        // b's deadline (901 s) had passed at the event above: off, at its deadline.
        ev("b", Kind::CheckOut, 2_000_000),
        // Not checked in: nothing, even after idle time.
        ev("b", Kind::Motion, 9_000_000),
    ] {
        input.pipe_at(e.room_id.clone(), e.clone(), e.ts).unwrap();
    }
    let hvac = driver
        .output_topic::<String, HvacCommand>(
            &topics.hvac_commands,
            Utf8,
            Json::<HvacCommand>::default(),
        )
        .read_values()
        .unwrap();
    let cmd = |room: &str, command, ts| HvacCommand {
        room_id: room.into(),
        command,
        ts,
    };
    assert_eq!(
        hvac,
        vec![
            cmd("b", Command::HeatingOff, 1_000 + FIFTEEN_MINUTES),
            cmd("a", Command::HeatingOff, 60_000 + FIFTEEN_MINUTES),
            cmd("a", Command::HeatingOn, 60_000 + FIFTEEN_MINUTES),
            // a's idle clock restarted at the door event: off 15 minutes later, brought
            // about by b's check-out.
            cmd("a", Command::HeatingOff, 60_000 + 2 * FIFTEEN_MINUTES),
        ]
    );
    let cleaning = driver
        .output_topic::<String, CleaningRequest>(
            &topics.cleaning_requests,
            Utf8,
            Json::<CleaningRequest>::default(),
        )
        .read_values()
        .unwrap();
    assert_eq!(
        cleaning,
        vec![CleaningRequest {
            room_id: "b".into(),
            checked_out_at: 2_000_000
        }]
    );
}

#[test]
fn the_example_binary_is_exactly_once_under_sigkill() {
    use std::time::Duration;
    use streams_testkit::kafka::{read_to_end, Isolation};
    use streams_testkit::unique;
    let bootstrap = streams_testkit::bootstrap_servers();
    let names: Vec<String> = ["sh-in", "sh-hvac", "sh-clean", "sh-dlq", "sh-app"]
        .iter()
        .map(|n| unique(n))
        .collect();
    let dir = std::env::temp_dir().join(unique("sh-state"));
    let common = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--application-id".into(),
            names[4].clone(),
            "--state-dir".into(),
            dir.display().to_string(),
            "--room-events".into(),
            names[0].clone(),
            "--hvac-commands".into(),
            names[1].clone(),
            "--cleaning-requests".into(),
            names[2].clone(),
            "--dead-letters".into(),
            names[3].clone(),
            // A killed instance's group membership ends after 6 s, not 45.
            "--set".into(),
            "session.timeout.ms=6000".into(),
            "--set".into(),
            "heartbeat.interval.ms=1000".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    const KILLS: usize = 2;
    example_process::kill_then_finish(
        "smart_hotel",
        common,
        &["--generate", "30000"],
        KILLS,
        "records in ",
        (&names[4], &names[0]),
    );
    let input = read_to_end(
        &bootstrap,
        &names[0],
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap();

    // The oracle per input partition (each has its own stream time), from the input as it is
    // in the topic; outputs compared per room, in order.
    let mut by_partition: BTreeMap<i32, Vec<RoomEvent>> = BTreeMap::new();
    let mut malformed = 0;
    for r in &input {
        match serde_json::from_slice::<RoomEvent>(r.value.as_deref().unwrap_or_default()) {
            Ok(e) => by_partition.entry(r.partition).or_default().push(e),
            Err(_) => malformed += 1,
        }
    }
    let mut want_hvac: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut want_cleaning: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut late, mut ignored) = (0, 0);
    for events in by_partition.values() {
        let e = oracle(events);
        for c in e.hvac {
            let v = serde_json::to_string(&c).unwrap();
            want_hvac.entry(c.room_id).or_default().push(v);
        }
        for c in e.cleaning {
            let v = serde_json::to_string(&c).unwrap();
            want_cleaning.entry(c.room_id).or_default().push(v);
        }
        late += e.late;
        ignored += e.ignored;
    }
    let per_room = |topic: &str| -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in read_to_end(
            &bootstrap,
            topic,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .unwrap()
        {
            m.entry(r.key_str()).or_default().push(r.value_str());
        }
        m
    };
    let (got_hvac, got_cleaning) = (per_room(&names[1]), per_room(&names[2]));
    let dead = read_to_end(
        &bootstrap,
        &names[3],
        Isolation::ReadCommitted,
        Duration::from_secs(60),
    )
    .unwrap()
    .len();
    let count = |m: &BTreeMap<String, Vec<String>>| m.values().map(Vec::len).sum::<usize>();
    eprintln!(
        "smart hotel under SIGKILL: kills {KILLS}, events {}, heating commands {} (expected {}), \
         cleaning requests {} (expected {}), late {late}, ignored {ignored}, malformed \
         {malformed}, dead letters {dead}",
        input.len() - malformed,
        count(&got_hvac),
        count(&want_hvac),
        count(&got_cleaning),
        count(&want_cleaning)
    );
    assert_eq!(got_hvac, want_hvac);
    assert_eq!(got_cleaning, want_cleaning);
    assert_eq!(dead, malformed);
    assert!(count(&want_hvac) > 100 && count(&want_cleaning) > 100);
}
