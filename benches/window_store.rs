//! Window-store cost per record, figures printed:
//!
//! ```text
//! cargo bench --bench window_store [-- RECORDS]
//! ```
//!
//! The work a windowed count does per record, on a RocksDB window store (1-minute tumbling
//! windows, 10-minute retention, 1,000 keys, event time advancing 50 ms per record): `fetch`
//! of the key's windows over the last two minutes, then `put`; every 100 records the commit
//! the runtime makes (`flush`, which expires old segments, then `commit`). RECORDS defaults to
//! 300,000. Baseline in the same run: a RocksDB key-value store doing `get` then `put` per
//! record with the same commits. Prints µs per record for both and the ratio window/key-value,
//! twice, alternating the order.

use std::time::{Duration, Instant};

use kstreams::core::serde::{BigEndian, Utf8};
use kstreams::core::store::{
    KeyValueStore, RocksResources, StateStore, StoreBuilder, StoreContext, WindowStore,
};
use kstreams::core::TaskId;

const KEYS: usize = 1_000;
const STEP_MS: i64 = 50;
const WINDOW_MS: i64 = 60_000;

fn open(builder: &dyn StoreBuilder, dir: &std::path::Path) -> Box<dyn StateStore> {
    let rocks = RocksResources::default();
    let ctx = StoreContext {
        task: TaskId {
            subtopology: 0,
            partition: 0,
        },
        application_id: "bench",
        dir: Some(dir),
        rocks: &rocks,
    };
    builder.build(&ctx).unwrap()
}

fn window(n: usize, keys: &[String]) -> f64 {
    let dir = std::env::temp_dir().join(format!("kstreams-bench-window-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let builder =
        WindowStore::<String, u64>::builder("win", Duration::from_secs(600), Utf8, BigEndian);
    let mut store = open(&builder, &dir);
    let start = Instant::now();
    let mut found = 0usize;
    for i in 0..n {
        let ts = i as i64 * STEP_MS;
        let window_start = ts - ts.rem_euclid(WINDOW_MS);
        let key = &keys[i % KEYS];
        let w = store
            .as_any_mut()
            .downcast_mut::<WindowStore<String, u64>>()
            .unwrap();
        let windows = w.fetch(key, ts - 120_000, ts).unwrap();
        found += windows.len();
        let count = windows
            .iter()
            .find(|(s, _)| *s == window_start)
            .map_or(0, |(_, c)| *c);
        w.put(key, &(count + 1), window_start).unwrap();
        if i % 100 == 99 {
            store.flush().unwrap();
            store.core_mut().unwrap().commit(Some(i as i64)).unwrap();
        }
    }
    let per = start.elapsed().as_secs_f64() / n as f64 * 1e6;
    assert!(found > 0);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    per
}

fn key_value(n: usize, keys: &[String]) -> f64 {
    let dir = std::env::temp_dir().join(format!("kstreams-bench-kv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let builder = KeyValueStore::<String, u64>::builder("kv", Utf8, BigEndian);
    let mut store = open(&builder, &dir);
    let start = Instant::now();
    for i in 0..n {
        let key = &keys[i % KEYS];
        let kv = store
            .as_any_mut()
            .downcast_mut::<KeyValueStore<String, u64>>()
            .unwrap();
        let count = kv.get(key).unwrap().unwrap_or(0);
        kv.put(key, &(count + 1)).unwrap();
        if i % 100 == 99 {
            store.flush().unwrap();
            store.core_mut().unwrap().commit(Some(i as i64)).unwrap();
        }
    }
    let per = start.elapsed().as_secs_f64() / n as f64 * 1e6;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    per
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300_000);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i:04}")).collect();
    let mut ratios = vec![];
    for round in 0..2 {
        let (w, kv) = if round == 0 {
            let w = window(n, &keys);
            (w, key_value(n, &keys))
        } else {
            let kv = key_value(n, &keys);
            (window(n, &keys), kv)
        };
        println!(
            "round {}: {n} records; window store fetch+put {w:.2} µs/record, key-value get+put {kv:.2} µs/record, ratio {:.2}",
            round + 1,
            w / kv
        );
        ratios.push(w / kv);
    }
    println!(
        "window/key-value ratio: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
