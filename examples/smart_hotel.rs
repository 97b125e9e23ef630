//! A smart hotel with the DSL, exactly-once: heating switched off in rooms whose guest is
//! away, back on when they return, and a cleaning request at every check-out.
//!
//! ```text
//! scripts/run-example.sh smart_hotel --generate 20000 --run-for 60
//! ```
//!
//! Input `room-events` (key: room id, value `{"room_id", "kind", "ts"}` with `kind` one of
//! `check_in`, `check_out`, `motion`, `door`); event time is `ts`. Outputs (key: room id):
//!
//! - `hvac-commands`, `{"room_id", "command", "ts"}`: `heating_off` when a checked-in room has
//!   had no motion or door event for 15 minutes of event time, with `ts` = the last such event
//!   (or the check-in) + 15 minutes; `heating_on` at the next motion or door event in that
//!   room, with that event's `ts`. Nothing for rooms not checked in.
//! - `cleaning-requests`, `{"room_id", "checked_out_at"}`: once per check-out.
//!
//! The rules, exactly (the tests' oracle follows them):
//!
//! - The record key is the room; state is kept per room, in stores with changelogs, so it
//!   survives a crash and moves with the room's partition.
//! - The 15 minutes are measured in event time, against the stream time of the room's
//!   partition (the largest `ts` read from it): a room's `heating_off` is emitted when a
//!   record of its partition brings stream time to or past the room's deadline (before that
//!   record is applied), so an idle spell of exactly 15 minutes switches heating off.
//! - Heating is off from a `heating_off` until the next motion or door event of the room while
//!   it is checked in; a check-out leaves it as it is, and a room whose heating is off sends no
//!   second `heating_off`.
//! - A check-in starts the idle clock; a check-in of a room already checked in, and a
//!   check-out of a room not checked in, change nothing: they are logged and counted as
//!   ignored.
//! - A room's events are expected in `ts` order: an event older than the room's latest one
//!   is logged and dropped, counted as late.
//!
//! A value that is not such JSON (a missing field, an unknown `kind`) goes to the dead-letter
//! topic (`room-events-dead-letters`) with the error in its headers. Flags: those of every
//! example (see `examples/support/app.rs`) and the topics: `--room-events`,
//! `--hvac-commands`, `--cleaning-requests`, `--dead-letters`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kstreams::core::handlers::DeadLetterTopic;
use kstreams::core::serde::{BigEndian, Json, RawBytes, Utf8};
use kstreams::core::store::KeyValueStore;
use kstreams::core::{Processor, ProcessorContext, Record, Topology};
use kstreams::dsl::{Consumed, Named, Produced, StreamsBuilder};
use serde::{Deserialize, Serialize};

/// Idle time after which a checked-in room's heating goes off: 15 minutes.
pub const IDLE_MS: i64 = 15 * 60 * 1000;

/// What happened in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A guest checks in.
    CheckIn,
    /// The guest checks out.
    CheckOut,
    /// A motion sensor saw someone.
    Motion,
    /// The door opened or closed.
    Door,
}

/// An event of a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomEvent {
    /// The room (the record key is the room; this field must be present).
    pub room_id: String,
    /// What happened.
    pub kind: Kind,
    /// Event time, epoch milliseconds.
    pub ts: i64,
}

/// A command to a room's heating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Switch heating off: the guest is away.
    HeatingOff,
    /// Switch heating on: the guest is back.
    HeatingOn,
}

/// A record of `hvac-commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HvacCommand {
    /// The room.
    pub room_id: String,
    /// What to do.
    pub command: Command,
    /// When, in event time.
    pub ts: i64,
}

/// A record of `cleaning-requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleaningRequest {
    /// The room.
    pub room_id: String,
    /// The check-out's event time.
    pub checked_out_at: i64,
}

/// What the room processor emits, before it is split into the two output topics.
#[derive(Debug, Clone)]
pub enum Action {
    /// To `hvac-commands`.
    Hvac(HvacCommand),
    /// To `cleaning-requests`.
    Cleaning(CleaningRequest),
}

/// The topics the application reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Input.
    pub room_events: String,
    /// Output: heating commands.
    pub hvac_commands: String,
    /// Output: cleaning requests.
    pub cleaning_requests: String,
    /// Output: the values that are not room events.
    pub dead_letters: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            room_events: "room-events".into(),
            hvac_commands: "hvac-commands".into(),
            cleaning_requests: "cleaning-requests".into(),
            dead_letters: "room-events-dead-letters".into(),
        }
    }
}

/// What the live summary counts.
#[derive(Clone, Default)]
pub struct Counters {
    /// Room events read.
    pub events: Arc<AtomicU64>,
    /// Heating commands written.
    pub commands: Arc<AtomicU64>,
    /// Cleaning requests written.
    pub cleanings: Arc<AtomicU64>,
    /// Events dropped because the room had a later one already.
    pub late: Arc<AtomicU64>,
    /// Check-ins of rooms checked in and check-outs of rooms not checked in.
    pub ignored: Arc<AtomicU64>,
}

/// Store of each room's state.
pub const ROOMS: &str = "rooms";
/// Store of the heating-off deadlines of checked-in rooms, ordered by deadline (key: the
/// deadline and the room, value: the room).
pub const DEADLINES: &str = "idle-deadlines";
/// Store of the partition's stream time (one entry).
pub const CLOCK: &str = "stream-time";
const CLOCK_KEY: &str = "stream-time";

/// A room's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Room {
    checked_in: bool,
    heating_off: bool,
    /// `ts` of the room's latest event.
    last_event: i64,
    /// Start of the idle clock: the check-in or the latest motion or door event since.
    idle_since: i64,
}

impl Room {
    /// Whether the room waits for a `heating_off` (at `idle_since + IDLE_MS`).
    fn armed(&self) -> bool {
        self.checked_in && !self.heating_off
    }
}

/// A deadline's key: the time (ordered as signed) then the room, so that a scan from the start
/// meets the deadlines in time order.
fn deadline_key(at: i64, room: &str) -> Vec<u8> {
    let mut k = ((at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(room.as_bytes());
    k
}

/// A deadline key's time.
fn deadline_at(k: &[u8]) -> i64 {
    let mut at = [0; 8];
    at.copy_from_slice(&k[..8]);
    (u64::from_be_bytes(at) ^ (1 << 63)) as i64
}

type Ctx<'a> = ProcessorContext<'a, String, Action>;

/// The rooms' state machine (see the module docs).
struct Rooms {
    counters: Counters,
}

impl Rooms {
    /// Advances stream time to `ts` and switches heating off in every room whose deadline it
    /// reached.
    fn advance(&mut self, ts: i64, ctx: &mut Ctx<'_>) -> kstreams::core::Result<()> {
        let clock = ctx.state_store::<KeyValueStore<String, i64>>(CLOCK)?;
        let key = CLOCK_KEY.to_string();
        let now = clock.get(&key)?.unwrap_or(i64::MIN);
        if ts <= now {
            return Ok(());
        }
        clock.put(&key, &ts)?;
        let deadlines = ctx.state_store::<KeyValueStore<Vec<u8>, String>>(DEADLINES)?;
        let mut due = vec![];
        for entry in deadlines.all()? {
            let (k, room) = entry?;
            let at = deadline_at(&k);
            if at > ts {
                break;
            }
            due.push((k, at, room));
        }
        for (k, at, room_id) in due {
            ctx.state_store::<KeyValueStore<Vec<u8>, String>>(DEADLINES)?
                .delete(&k)?;
            let rooms = ctx.state_store::<KeyValueStore<String, Room>>(ROOMS)?;
            let mut room = rooms.get(&room_id)?.unwrap_or_default();
            room.heating_off = true;
            rooms.put(&room_id, &room)?;
            self.emit_hvac(&room_id, Command::HeatingOff, at, ctx)?;
        }
        Ok(())
    }

    fn emit_hvac(
        &self,
        room: &str,
        command: Command,
        ts: i64,
        ctx: &mut Ctx<'_>,
    ) -> kstreams::core::Result<()> {
        let c = HvacCommand {
            room_id: room.to_string(),
            command,
            ts,
        };
        ctx.forward(Record::new(room.to_string(), Action::Hvac(c), ts))
    }

    fn ignore(&self, room: &str, e: &RoomEvent, why: &str) {
        self.counters.ignored.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(room, kind = ?e.kind, ts = e.ts, "room event ignored: {why}");
    }
}

impl Processor for Rooms {
    type KeyIn = String;
    type ValueIn = RoomEvent;
    type KeyOut = String;
    type ValueOut = Action;

    fn process(
        &mut self,
        record: Record<String, RoomEvent>,
        ctx: &mut Ctx<'_>,
    ) -> kstreams::core::Result<()> {
        let (room_id, e) = (record.key().clone(), record.value().clone());
        self.advance(e.ts, ctx)?;
        let rooms = ctx.state_store::<KeyValueStore<String, Room>>(ROOMS)?;
        let mut room = rooms.get(&room_id)?.unwrap_or(Room {
            last_event: i64::MIN,
            ..Room::default()
        });
        if e.ts < room.last_event {
            self.counters.late.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                room = room_id,
                ts = e.ts,
                latest = room.last_event,
                "room event older than the room's latest: dropped as late"
            );
            return Ok(());
        }
        room.last_event = e.ts;
        let old_deadline = room
            .armed()
            .then(|| deadline_key(room.idle_since + IDLE_MS, &room_id));
        let mut cleaning = None;
        let mut heating_on = false;
        match (e.kind, room.checked_in) {
            (Kind::CheckIn, true) => self.ignore(&room_id, &e, "the room is checked in"),
            (Kind::CheckOut, false) => self.ignore(&room_id, &e, "the room is not checked in"),
            (Kind::CheckIn, false) => {
                room.checked_in = true;
                room.idle_since = e.ts;
            }
            (Kind::CheckOut, true) => {
                room.checked_in = false;
                cleaning = Some(CleaningRequest {
                    room_id: room_id.clone(),
                    checked_out_at: e.ts,
                });
            }
            (Kind::Motion | Kind::Door, true) => {
                heating_on = room.heating_off;
                room.heating_off = false;
                room.idle_since = e.ts;
            }
            (Kind::Motion | Kind::Door, false) => {}
        }
        let new_deadline = room
            .armed()
            .then(|| deadline_key(room.idle_since + IDLE_MS, &room_id));
        ctx.state_store::<KeyValueStore<String, Room>>(ROOMS)?
            .put(&room_id, &room)?;
        if old_deadline != new_deadline {
            let deadlines = ctx.state_store::<KeyValueStore<Vec<u8>, String>>(DEADLINES)?;
            if let Some(k) = old_deadline {
                deadlines.delete(&k)?;
            }
            if let Some(k) = new_deadline {
                deadlines.put(&k, &room_id)?;
            }
        }
        if heating_on {
            self.emit_hvac(&room_id, Command::HeatingOn, e.ts, ctx)?;
        }
        if let Some(c) = cleaning {
            ctx.forward(Record::new(room_id, Action::Cleaning(c), e.ts))?;
        }
        Ok(())
    }
}

/// The topology over `topics`, counting into `counters`.
pub fn build_topology(topics: &Topics, counters: &Counters) -> kstreams::core::Result<Topology> {
    let builder = StreamsBuilder::new();
    builder
        .add_state_store(KeyValueStore::<String, Room>::builder(
            ROOMS,
            Utf8,
            Json::<Room>::default(),
        ))
        .add_state_store(KeyValueStore::<Vec<u8>, String>::builder(
            DEADLINES, RawBytes, Utf8,
        ))
        .add_state_store(KeyValueStore::<String, i64>::builder(
            CLOCK, Utf8, BigEndian,
        ));
    let events = counters.events.clone();
    let c = counters.clone();
    let actions = builder
        .stream_with::<String, RoomEvent>(
            topics.room_events.as_str(),
            Consumed::with(Utf8, Json::<RoomEvent>::default())
                .with_timestamp_extractor(|r, _| r.value().ts),
        )
        .peek(move |_, _| {
            events.fetch_add(1, Ordering::Relaxed);
        })
        .process(
            move || Rooms {
                counters: c.clone(),
            },
            &[ROOMS, DEADLINES, CLOCK],
        )
        .split(Named::as_("action-"))
        .branch("hvac", |_, a| matches!(a, Action::Hvac(_)))
        .default_branch("cleaning");
    let commands = counters.commands.clone();
    actions["action-hvac"]
        .flat_map_values(|a| match a {
            Action::Hvac(c) => Some(c),
            Action::Cleaning(_) => None,
        })
        .peek(move |_, _| {
            commands.fetch_add(1, Ordering::Relaxed);
        })
        .to_with(
            &topics.hvac_commands,
            Produced::with(Utf8, Json::<HvacCommand>::default()),
        );
    let cleanings = counters.cleanings.clone();
    actions["action-cleaning"]
        .flat_map_values(|a| match a {
            Action::Cleaning(c) => Some(c),
            Action::Hvac(_) => None,
        })
        .peek(move |_, _| {
            cleanings.fetch_add(1, Ordering::Relaxed);
        })
        .to_with(
            &topics.cleaning_requests,
            Produced::with(Utf8, Json::<CleaningRequest>::default()),
        );
    builder.build()
}

fn main() -> anyhow::Result<()> {
    cli::run()
}

#[path = "support/app.rs"]
mod app;

/// The command line application: flags, topics, generated input, the live summary.
mod cli {
    use super::*;
    use rdkafka::producer::{BaseRecord, Producer};
    use std::time::Duration;
    use streams_testkit::kafka::{idempotent_producer, send_retrying};

    /// Guests checking in and out of 50 rooms, moving about, now and then away for more than
    /// 15 minutes; events in time order but for a few late ones, and a few malformed values.
    fn generate(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<()> {
        let p = idempotent_producer(bootstrap)?;
        let rooms = 50;
        let mut checked_in = vec![false; rooms];
        let mut rng_state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        // Event times from 0 first; shifted below so that the last one is about now.
        let mut ts = 0_i64;
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            // 0 to 20 s between events: a room sees one every ~8 minutes on average, and
            // about one gap in six is longer than 15 minutes.
            ts += (next() % 20_000) as i64;
            let r = (next() % rooms as u64) as usize;
            let roll = next() % 100;
            let kind = if checked_in[r] {
                match roll {
                    0..=5 => Kind::CheckOut,
                    6 => Kind::CheckIn, // ignored: already checked in
                    7..=60 => Kind::Motion,
                    _ => Kind::Door,
                }
            } else {
                match roll {
                    0..=59 => Kind::CheckIn,
                    60..=64 => Kind::CheckOut, // ignored: not checked in
                    _ => Kind::Motion,         // housekeeping: nothing happens
                }
            };
            match kind {
                Kind::CheckIn => checked_in[r] = true,
                Kind::CheckOut => checked_in[r] = false,
                _ => {}
            }
            let room_id = format!("room-{r:03}");
            // Now and then an event that arrives late (20 minutes behind).
            let event_ts = if i % 997 == 996 { ts - 1_200_000 } else { ts };
            events.push((i, room_id, kind, event_ts));
        }
        let shift = app::generated_event_times_start(Duration::from_millis(ts as u64));
        for (i, room_id, kind, event_ts) in events {
            let event_ts = event_ts + shift;
            let e = RoomEvent {
                room_id: room_id.clone(),
                kind,
                ts: event_ts,
            };
            let v = if i % 1_000 == 999 {
                format!(
                    "{{\"room_id\": \"{room_id}\", \"kind\": \"teleport\", \"ts\": {event_ts}}}"
                )
            } else {
                serde_json::to_string(&e)?
            };
            send_retrying(
                &p,
                BaseRecord::to(topic)
                    .key(&room_id)
                    .payload(&v)
                    .timestamp(event_ts),
            )?;
        }
        p.flush(Duration::from_secs(60))?;
        println!("generated {n} room events into {topic}");
        Ok(())
    }

    pub(super) fn run() -> anyhow::Result<()> {
        app::init_logging();
        let mut topics = Topics::default();
        let args = app::Args::parse(
            "smart_hotel",
            "smart-hotel",
            &mut [
                ("--room-events", &mut topics.room_events),
                ("--hvac-commands", &mut topics.hvac_commands),
                ("--cleaning-requests", &mut topics.cleaning_requests),
                ("--dead-letters", &mut topics.dead_letters),
            ],
        )?;
        let counters = Counters::default();
        let topology = build_topology(&topics, &counters)?;
        if args.describe {
            app::describe(&topology);
            return Ok(());
        }
        let bootstrap = args.bootstrap_servers();
        app::create_topics(
            &bootstrap,
            &[
                &topics.room_events,
                &topics.hvac_commands,
                &topics.cleaning_requests,
                &topics.dead_letters,
            ],
        )?;
        if args.generate > 0 {
            generate(&bootstrap, &topics.room_events, args.generate)?;
        }
        let config = args
            .config(&bootstrap)
            .deserialization_error_handler(DeadLetterTopic(topics.dead_letters.clone()));
        app::run(topology, config, args.run_for, || {
            let n = counters.events.load(Ordering::Relaxed);
            let line = format!(
                "records in {n}, heating commands out {}, cleaning requests out {}, dropped as late {}, ignored {}",
                counters.commands.load(Ordering::Relaxed),
                counters.cleanings.load(Ordering::Relaxed),
                counters.late.load(Ordering::Relaxed),
                counters.ignored.load(Ordering::Relaxed),
            );
            (n, line)
        })
    }
}
