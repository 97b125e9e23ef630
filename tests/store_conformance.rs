//! Store conformance: the same cases run against every built-in store implementation.
//!
//! Key-value, window and session stores are each built through their public builders, once
//! RocksDB-backed (the builders' default) and once in memory (`.in_memory()`), and opened the
//! way the runtime opens them (`StoreBuilder::build` with a task's `StoreContext`). Every case
//! is a function taking `persistent: bool`; [`conformance!`] turns it into one test per
//! implementation, named `<case>_rocksdb` and `<case>_memory`.

use std::io::Write;
use std::marker::PhantomData;
use std::ops::{Bound, Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use streams_core::serde::{BigEndian, Nullable, RawBytes, Utf8};
use streams_core::store::{
    Batch, KeyValueIter, KeyValueStore, KeyValueStoreBuilder, RocksResources, SessionStore,
    SessionStoreBuilder, StateStore, StoreBuilder, StoreContext, WindowStore, WindowStoreBuilder,
};
use streams_core::TaskId;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Generates one test per implementation from a case function `fn(persistent: bool)`.
/// Attributes (e.g. `#[ignore = "bug: ..."]`) may precede either generated name.
macro_rules! conformance {
    ($case:ident: $(#[$ra:meta])* $rocks:ident, $(#[$ma:meta])* $mem:ident $(,)?) => {
        #[test]
        $(#[$ra])*
        fn $rocks() {
            $case(true);
        }

        #[test]
        $(#[$ma])*
        fn $mem() {
            $case(false);
        }
    };
}

/// A fresh directory under the system temp dir, removed when dropped (also on panic).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "kstreams-store-conformance-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one test needs to open (and reopen) store instances of one implementation.
struct Env {
    persistent: bool,
    rocks: RocksResources,
    dir: TempDir,
}

impl Env {
    fn new(persistent: bool) -> Self {
        Env {
            persistent,
            rocks: RocksResources::default(),
            dir: TempDir::new(),
        }
    }

    /// Opens an instance for task 0_0 of application "app" and checks its concrete type and
    /// where it keeps its data (a RocksDB directory, or none for memory).
    fn open<T: StateStore>(&self, builder: &dyn StoreBuilder) -> Typed<T> {
        let ctx = StoreContext {
            task: TaskId {
                subtopology: 0,
                partition: 0,
            },
            application_id: "app",
            dir: Some(self.dir.path()),
            rocks: &self.rocks,
        };
        let mut inner = builder.build(&ctx).expect("build the store");
        assert_eq!(inner.name(), builder.name());
        assert!(
            inner.as_any_mut().downcast_mut::<T>().is_some(),
            "the builder built a {} store",
            std::any::type_name::<T>()
        );
        assert_eq!(
            self.dir.path().join(builder.name()).exists(),
            self.persistent,
            "a RocksDB store keeps its data in <dir>/<store>, a memory store has no directory"
        );
        Typed {
            inner,
            _t: PhantomData,
        }
    }

    fn kv<K: 'static, V: 'static>(
        &self,
        builder: KeyValueStoreBuilder<K, V>,
    ) -> Typed<KeyValueStore<K, V>> {
        let builder = if self.persistent {
            builder
        } else {
            builder.in_memory()
        };
        self.open(&builder)
    }

    fn window<K: 'static, V: 'static>(
        &self,
        builder: WindowStoreBuilder<K, V>,
    ) -> Typed<WindowStore<K, V>> {
        let builder = if self.persistent {
            builder
        } else {
            builder.in_memory()
        };
        self.open(&builder)
    }

    fn session<K: 'static, V: 'static>(
        &self,
        builder: SessionStoreBuilder<K, V>,
    ) -> Typed<SessionStore<K, V>> {
        let builder = if self.persistent {
            builder
        } else {
            builder.in_memory()
        };
        self.open(&builder)
    }
}

/// The `Box<dyn StateStore>` the builder returned, used as the concrete store by downcasting
/// on every access.
struct Typed<T> {
    inner: Box<dyn StateStore>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Typed<T> {
    /// The store as the runtime sees it (for `flush`).
    fn state_store(&mut self) -> &mut dyn StateStore {
        &mut *self.inner
    }
}

impl<T: 'static> Deref for Typed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.inner.as_any().downcast_ref::<T>().expect("store type")
    }
}

impl<T: 'static> DerefMut for Typed<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.inner
            .as_any_mut()
            .downcast_mut::<T>()
            .expect("store type")
    }
}

type Kv = KeyValueStore<String, u64>;

fn kv_builder(name: &str) -> KeyValueStoreBuilder<String, u64> {
    KeyValueStore::<String, u64>::builder(name, Utf8, BigEndian)
}

/// A scan's entries, collected.
fn scan<K, V>(entries: streams_core::Result<KeyValueIter<'_, K, V>>) -> Vec<(K, V)>
where
    K: 'static,
    V: 'static,
{
    entries
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap()
}

fn s(x: &str) -> String {
    x.to_string()
}

fn entries(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn put_all(store: &mut Kv, list: &[(&str, u64)]) {
    for (k, v) in list {
        store.put(&s(k), v).unwrap();
    }
}

/// A changelog record as the store queues it: Utf8 key bytes, BigEndian u64 value bytes.
fn rec(key: &str, value: Option<u64>) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        key.as_bytes().to_vec(),
        value.map(|v| v.to_be_bytes().to_vec()),
    )
}

const RETENTION: Duration = Duration::from_secs(120);
/// Segment interval for a 2-minute retention: max(retention / 2, 60 s).
const SEGMENT: i64 = 60_000;

// ---------------------------------------------------------------------------------------------
// Key-value stores
// ---------------------------------------------------------------------------------------------

fn kv_put_get_delete(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));

    assert_eq!(kv.get(&s("a")).unwrap(), None);
    kv.put(&s("a"), &1).unwrap();
    assert_eq!(kv.get(&s("a")).unwrap(), Some(1));
    kv.put(&s("a"), &2).unwrap();
    assert_eq!(kv.get(&s("a")).unwrap(), Some(2), "put overwrites");

    assert_eq!(kv.put_if_absent(&s("a"), &9).unwrap(), Some(2));
    assert_eq!(
        kv.get(&s("a")).unwrap(),
        Some(2),
        "put_if_absent keeps the value"
    );
    assert_eq!(kv.put_if_absent(&s("b"), &3).unwrap(), None);
    assert_eq!(kv.get(&s("b")).unwrap(), Some(3));

    kv.core_mut().commit(None).unwrap();
    assert_eq!(kv.get(&s("a")).unwrap(), Some(2));
    assert_eq!(kv.get(&s("b")).unwrap(), Some(3));
    assert_eq!(kv.put_if_absent(&s("b"), &4).unwrap(), Some(3));

    assert_eq!(
        kv.delete(&s("a")).unwrap(),
        Some(2),
        "delete returns the old value"
    );
    assert_eq!(kv.get(&s("a")).unwrap(), None);
    assert_eq!(kv.delete(&s("a")).unwrap(), None);
    assert_eq!(kv.delete(&s("never")).unwrap(), None);
    assert_eq!(
        kv.put_if_absent(&s("a"), &5).unwrap(),
        None,
        "deleted is absent"
    );
    assert_eq!(kv.get(&s("a")).unwrap(), Some(5));
    assert_eq!(kv.delete(&s("b")).unwrap(), Some(3));

    kv.core_mut().commit(None).unwrap();
    assert_eq!(kv.get(&s("a")).unwrap(), Some(5));
    assert_eq!(kv.get(&s("b")).unwrap(), None);
    assert_eq!(scan(kv.all()), entries(&[("a", 5)]));
}
conformance!(kv_put_get_delete: kv_put_get_delete_rocksdb, kv_put_get_delete_memory);

/// "A value that serializes to null deletes it."
fn kv_put_null_deletes(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(KeyValueStore::<String, Option<u64>>::builder(
        "kv",
        Utf8,
        Nullable(BigEndian),
    ));
    kv.put(&s("a"), &Some(1)).unwrap();
    kv.put(&s("b"), &Some(2)).unwrap();
    kv.core_mut().commit(None).unwrap();
    kv.put(&s("a"), &None).unwrap();
    assert_eq!(kv.get(&s("a")).unwrap(), None);
    assert_eq!(scan(kv.all()), vec![(s("b"), Some(2))]);
    assert_eq!(
        kv.core_mut().take_outbox(),
        vec![rec("a", Some(1)), rec("b", Some(2)), (b"a".to_vec(), None)]
    );
    kv.core_mut().commit(None).unwrap();
    assert_eq!(kv.get(&s("a")).unwrap(), None);
    assert_eq!(kv.len().unwrap(), 1);
}
conformance!(kv_put_null_deletes: kv_put_null_deletes_rocksdb, kv_put_null_deletes_memory);

fn kv_range(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    // Half committed, half pending: range merges both.
    put_all(&mut kv, &[("c", 5), ("a", 1), ("ba", 4)]);
    kv.core_mut().commit(None).unwrap();
    put_all(&mut kv, &[("b", 3), ("aa", 2)]);

    for stage in ["pending", "committed"] {
        assert_eq!(
            scan(kv.range(&s("a"), &s("b"))),
            entries(&[("a", 1), ("aa", 2), ("b", 3)]),
            "{stage}: both bounds included, key-byte order"
        );
        assert_eq!(
            scan(kv.range(&s("aa"), &s("ba"))),
            entries(&[("aa", 2), ("b", 3), ("ba", 4)]),
            "{stage}"
        );
        assert_eq!(
            scan(kv.range(&s("ab"), &s("bz"))),
            entries(&[("b", 3), ("ba", 4)]),
            "{stage}: bounds need not be keys"
        );
        assert_eq!(scan(kv.range(&s("b"), &s("b"))), entries(&[("b", 3)]));
        assert_eq!(scan(kv.range(&s("bb"), &s("bz"))), vec![], "{stage}");
        assert_eq!(
            scan(kv.range(&s("c"), &s("a"))),
            vec![],
            "{stage}: from > to"
        );
        assert_eq!(
            scan(kv.range(&s("b"), &s("aa"))),
            vec![],
            "{stage}: from > to"
        );
        assert_eq!(
            scan(kv.range(&s(""), &s("zzz"))),
            entries(&[("a", 1), ("aa", 2), ("b", 3), ("ba", 4), ("c", 5)]),
            "{stage}"
        );
        kv.core_mut().commit(None).unwrap();
    }

    // Key-byte order, not the keys' natural order: BigEndian i64 puts negatives after
    // positives (two's complement, 0xff.. > 0x00..).
    let mut nums = env.kv(KeyValueStore::<i64, u64>::builder(
        "nums", BigEndian, BigEndian,
    ));
    for k in [-2i64, -1, 0, 1, 2] {
        nums.put(&k, &((k + 10) as u64)).unwrap();
    }
    let expected: Vec<(i64, u64)> = vec![(1, 11), (2, 12), (-2, 8), (-1, 9)];
    assert_eq!(scan(nums.range(&1, &-1)), expected);
    nums.core_mut().commit(None).unwrap();
    assert_eq!(scan(nums.range(&1, &-1)), expected);
    assert_eq!(scan(nums.range(&-1, &1)), vec![], "from > to in key bytes");
    assert_eq!(
        scan(nums.all()),
        vec![(0, 10), (1, 11), (2, 12), (-2, 8), (-1, 9)]
    );
}
conformance!(kv_range: kv_range_rocksdb, kv_range_memory);

fn kv_prefix_scan(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    put_all(&mut kv, &[("a/1", 1), ("b", 4), ("a", 0)]);
    kv.core_mut().commit(None).unwrap();
    put_all(&mut kv, &[("ab", 3), ("a/2", 2), ("a0", 5)]);

    for stage in ["pending", "committed"] {
        assert_eq!(
            scan(kv.prefix_scan(&s("a/"), &Utf8)),
            entries(&[("a/1", 1), ("a/2", 2)]),
            "{stage}"
        );
        assert_eq!(
            scan(kv.prefix_scan(&s("a"), &Utf8)),
            entries(&[("a", 0), ("a/1", 1), ("a/2", 2), ("a0", 5), ("ab", 3)]),
            "{stage}"
        );
        assert_eq!(
            scan(kv.prefix_scan(&s("a/1"), &Utf8)),
            entries(&[("a/1", 1)])
        );
        assert_eq!(scan(kv.prefix_scan(&s("c"), &Utf8)), vec![], "{stage}");
        assert_eq!(scan(kv.prefix_scan(&s("a/3"), &Utf8)), vec![], "{stage}");
        assert_eq!(scan(kv.prefix_scan(&s(""), &Utf8)), scan(kv.all()));
        kv.core_mut().commit(None).unwrap();
    }

    // Prefixes ending in 0xff bytes (the upper bound carries, or there is none).
    let mut raw = env.kv(KeyValueStore::<Vec<u8>, u64>::builder(
        "raw", RawBytes, BigEndian,
    ));
    for (i, k) in [
        vec![0x01],
        vec![0x01, 0xff],
        vec![0x01, 0xff, 0x00],
        vec![0x02],
        vec![0xfe],
        vec![0xff],
        vec![0xff, 0x01],
        vec![0xff, 0xff],
    ]
    .into_iter()
    .enumerate()
    {
        raw.put(&k, &(i as u64)).unwrap();
    }
    for stage in ["pending", "committed"] {
        assert_eq!(
            scan(raw.prefix_scan(&vec![0x01, 0xff], &RawBytes)),
            vec![(vec![0x01, 0xff], 1), (vec![0x01, 0xff, 0x00], 2)],
            "{stage}"
        );
        assert_eq!(
            scan(raw.prefix_scan(&vec![0xff], &RawBytes)),
            vec![
                (vec![0xff], 5),
                (vec![0xff, 0x01], 6),
                (vec![0xff, 0xff], 7)
            ],
            "{stage}"
        );
        assert_eq!(
            scan(raw.prefix_scan(&vec![0xff, 0xff], &RawBytes)),
            vec![(vec![0xff, 0xff], 7)],
            "{stage}"
        );
        raw.core_mut().commit(None).unwrap();
    }
}
conformance!(kv_prefix_scan: kv_prefix_scan_rocksdb, kv_prefix_scan_memory);

fn kv_all_and_len(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    assert_eq!(scan(kv.all()), vec![]);
    assert_eq!(kv.len().unwrap(), 0);
    assert!(kv.is_empty().unwrap());

    put_all(&mut kv, &[("b", 2), ("a", 1)]);
    kv.core_mut().commit(None).unwrap();
    put_all(&mut kv, &[("c", 3), ("a", 10)]);
    assert_eq!(
        scan(kv.all()),
        entries(&[("a", 10), ("b", 2), ("c", 3)]),
        "in key order, pending writes included"
    );
    assert_eq!(kv.len().unwrap(), 3, "an overwrite is not a new entry");
    assert!(!kv.is_empty().unwrap());

    kv.delete(&s("b")).unwrap();
    assert_eq!(kv.len().unwrap(), 2);
    kv.core_mut().commit(None).unwrap();
    assert_eq!(scan(kv.all()), entries(&[("a", 10), ("c", 3)]));
    assert_eq!(kv.len().unwrap(), 2);
}
conformance!(kv_all_and_len: kv_all_and_len_rocksdb, kv_all_and_len_memory);

fn kv_approximate_num_entries(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    put_all(&mut kv, &[("a", 1), ("b", 2), ("c", 3)]);
    if !persistent {
        assert_eq!(
            kv.approximate_num_entries().unwrap(),
            0,
            "only committed entries"
        );
    }
    kv.core_mut().commit(None).unwrap();
    let n = kv.approximate_num_entries().unwrap();
    if persistent {
        assert!(n > 0, "RocksDB's estimate after committing 3 entries: {n}");
    } else {
        assert_eq!(n, 3, "memory counts exactly");
    }
    kv.delete(&s("a")).unwrap();
    kv.core_mut().commit(None).unwrap();
    let n = kv.approximate_num_entries().unwrap();
    if !persistent {
        assert_eq!(n, 2);
    }
}
conformance!(
    kv_approximate_num_entries: kv_approximate_num_entries_rocksdb,
    kv_approximate_num_entries_memory
);

fn kv_read_your_writes(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    put_all(&mut kv, &[("a", 1), ("b", 2), ("c", 3)]);
    kv.core_mut().commit(None).unwrap();

    // Uncommitted: a new key, an overwrite and a delete of committed keys.
    put_all(&mut kv, &[("d", 4), ("a", 10)]);
    assert_eq!(kv.delete(&s("b")).unwrap(), Some(2));
    assert!(kv.core().has_pending());
    assert_eq!(kv.get(&s("a")).unwrap(), Some(10));
    assert_eq!(
        kv.get(&s("b")).unwrap(),
        None,
        "a pending delete hides the committed value"
    );
    assert_eq!(kv.get(&s("d")).unwrap(), Some(4));
    let visible = entries(&[("a", 10), ("c", 3), ("d", 4)]);
    assert_eq!(scan(kv.range(&s("a"), &s("d"))), visible);
    assert_eq!(scan(kv.range(&s("b"), &s("b"))), vec![]);
    assert_eq!(scan(kv.all()), visible);
    assert_eq!(kv.len().unwrap(), 3);

    kv.core_mut().drop_uncommitted();
    assert!(!kv.core().has_pending());
    let committed = entries(&[("a", 1), ("b", 2), ("c", 3)]);
    assert_eq!(kv.get(&s("a")).unwrap(), Some(1));
    assert_eq!(kv.get(&s("b")).unwrap(), Some(2));
    assert_eq!(kv.get(&s("d")).unwrap(), None);
    assert_eq!(scan(kv.range(&s("a"), &s("d"))), committed);
    assert_eq!(scan(kv.all()), committed);
    assert_eq!(kv.len().unwrap(), 3);

    // Committing nothing after a drop changes nothing.
    kv.core_mut().commit(None).unwrap();
    assert_eq!(scan(kv.all()), committed);

    // A pending write then committed is durable against later drops.
    kv.delete(&s("c")).unwrap();
    kv.core_mut().commit(None).unwrap();
    kv.put(&s("c"), &30).unwrap();
    kv.core_mut().drop_uncommitted();
    assert_eq!(kv.get(&s("c")).unwrap(), None);
    assert_eq!(scan(kv.all()), entries(&[("a", 1), ("b", 2)]));
}
conformance!(kv_read_your_writes: kv_read_your_writes_rocksdb, kv_read_your_writes_memory);

fn kv_commit_offset(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    assert_eq!(kv.core().committed_offset().unwrap(), None);

    kv.put(&s("a"), &1).unwrap();
    kv.core_mut().commit(Some(41)).unwrap();
    assert_eq!(kv.core().committed_offset().unwrap(), Some(41));

    kv.put(&s("b"), &2).unwrap();
    kv.core_mut().commit(None).unwrap();
    assert_eq!(
        kv.core().committed_offset().unwrap(),
        Some(41),
        "commit(None) keeps the offset"
    );
    assert_eq!(kv.get(&s("b")).unwrap(), Some(2));
    kv.core_mut().commit(None).unwrap();
    assert_eq!(kv.core().committed_offset().unwrap(), Some(41));

    kv.put(&s("c"), &3).unwrap();
    kv.core_mut().drop_uncommitted();
    assert_eq!(kv.core().committed_offset().unwrap(), Some(41));

    kv.core_mut().commit(Some(50)).unwrap();
    assert_eq!(
        kv.core().committed_offset().unwrap(),
        Some(50),
        "an offset is stored even without pending writes"
    );
    assert_eq!(scan(kv.all()), entries(&[("a", 1), ("b", 2)]));
}
conformance!(kv_commit_offset: kv_commit_offset_rocksdb, kv_commit_offset_memory);

fn kv_changelog_uncached(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    assert_eq!(kv.core().name(), "kv");
    put_all(&mut kv, &[("a", 1), ("b", 2), ("a", 3)]);
    kv.delete(&s("b")).unwrap();
    kv.put_if_absent(&s("a"), &9).unwrap(); // present: no write
    kv.delete(&s("never")).unwrap(); // absent: no write
    kv.put_if_absent(&s("c"), &4).unwrap();
    let expected: Batch = vec![
        rec("a", Some(1)),
        rec("b", Some(2)),
        rec("a", Some(3)),
        rec("b", None),
        rec("c", Some(4)),
    ];
    assert_eq!(
        kv.core_mut().take_outbox(),
        expected,
        "every write, in order"
    );
    assert_eq!(kv.core_mut().take_outbox(), vec![], "taken once");

    kv.put(&s("d"), &5).unwrap();
    assert_eq!(
        kv.core_mut().cache_flush(),
        vec![rec("d", Some(5))],
        "without caching, cache_flush only sends what was not taken yet"
    );
    kv.core_mut().commit(Some(6)).unwrap();
    assert_eq!(kv.core_mut().take_outbox(), vec![]);
    assert_eq!(kv.core_mut().cache_flush(), vec![]);

    kv.put(&s("e"), &7).unwrap();
    kv.core_mut().drop_uncommitted();
    assert_eq!(
        kv.core_mut().take_outbox(),
        vec![],
        "dropped writes are not logged"
    );
}
conformance!(kv_changelog_uncached: kv_changelog_uncached_rocksdb, kv_changelog_uncached_memory);

fn kv_changelog_cached(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv").with_caching(true));
    put_all(&mut kv, &[("a", 1)]);
    kv.core_mut().commit(None).unwrap();
    assert_eq!(kv.core_mut().cache_flush(), vec![]);

    put_all(&mut kv, &[("c", 1), ("b", 2), ("c", 3), ("d", 4)]);
    kv.delete(&s("a")).unwrap();
    kv.delete(&s("d")).unwrap();
    assert_eq!(
        kv.core_mut().take_outbox(),
        vec![],
        "caching holds records back"
    );
    assert_eq!(scan(kv.all()), entries(&[("b", 2), ("c", 3)]));
    assert_eq!(
        kv.core_mut().cache_flush(),
        vec![
            rec("a", None),
            rec("b", Some(2)),
            rec("c", Some(3)),
            rec("d", None)
        ],
        "the last write per key"
    );
    kv.core_mut().commit(Some(3)).unwrap();
    assert_eq!(scan(kv.all()), entries(&[("b", 2), ("c", 3)]));
    assert_eq!(
        kv.core_mut().cache_flush(),
        vec![],
        "nothing left after the commit"
    );

    kv.put(&s("e"), &5).unwrap();
    kv.core_mut().drop_uncommitted();
    assert_eq!(kv.core_mut().cache_flush(), vec![]);
}
conformance!(kv_changelog_cached: kv_changelog_cached_rocksdb, kv_changelog_cached_memory);

fn kv_changelog_disabled(persistent: bool) {
    let env = Env::new(persistent);
    for (name, caching) in [("plain", false), ("cached", true)] {
        let mut kv = env.kv(kv_builder(name).with_logging(false).with_caching(caching));
        put_all(&mut kv, &[("a", 1), ("b", 2)]);
        kv.delete(&s("a")).unwrap();
        assert_eq!(kv.core_mut().take_outbox(), vec![], "{name}");
        assert_eq!(kv.core_mut().cache_flush(), vec![], "{name}");
        kv.core_mut().commit(None).unwrap();
        assert_eq!(
            scan(kv.all()),
            entries(&[("b", 2)]),
            "{name}: still a store"
        );
    }
}
conformance!(kv_changelog_disabled: kv_changelog_disabled_rocksdb, kv_changelog_disabled_memory);

fn kv_reopen(persistent: bool) {
    let env = Env::new(persistent);
    {
        let mut kv = env.kv(kv_builder("kv"));
        put_all(&mut kv, &[("a", 1), ("b", 2)]);
        kv.core_mut().commit(Some(7)).unwrap();
        // Uncommitted at the "crash": a new key, an overwrite, a delete.
        put_all(&mut kv, &[("c", 3), ("b", 20)]);
        kv.delete(&s("a")).unwrap();
        assert_eq!(scan(kv.all()), entries(&[("b", 20), ("c", 3)]));
        drop(kv);
    }
    let kv = env.kv(kv_builder("kv"));
    if persistent {
        assert_eq!(scan(kv.all()), entries(&[("a", 1), ("b", 2)]));
        assert_eq!(kv.get(&s("c")).unwrap(), None);
        assert_eq!(kv.core().committed_offset().unwrap(), Some(7));
    } else {
        assert_eq!(scan(kv.all()), vec![], "memory starts empty");
        assert_eq!(kv.core().committed_offset().unwrap(), None);
    }
}
conformance!(kv_reopen: kv_reopen_rocksdb, kv_reopen_memory);

/// `StoreCore::range` is public ("entries in the range, uncommitted writes included"): an
/// empty range with both bounds excluded and equal must be empty, not a panic.
fn core_range_empty_excluded(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    put_all(&mut kv, &[("a", 1), ("b", 2)]);
    kv.core_mut().commit(None).unwrap();
    kv.put(&s("c"), &3).unwrap();
    let core = kv.core();
    assert_eq!(
        core.range(Bound::Excluded(b"a"), Bound::Excluded(b"c"))
            .unwrap(),
        vec![(b"b".to_vec(), 2u64.to_be_bytes().to_vec())]
    );
    assert_eq!(
        core.range(Bound::Excluded(b"b"), Bound::Excluded(b"b"))
            .unwrap(),
        vec![]
    );
}
conformance!(
    core_range_empty_excluded:

    core_range_empty_excluded_rocksdb,

    core_range_empty_excluded_memory
);

// ---------------------------------------------------------------------------------------------
// Window stores
// ---------------------------------------------------------------------------------------------

type Win = WindowStore<String, u64>;

fn win_builder(name: &str) -> WindowStoreBuilder<String, u64> {
    WindowStore::<String, u64>::builder(name, RETENTION, Utf8, BigEndian)
}

fn windows(list: &[((&str, i64), u64)]) -> Vec<((String, i64), u64)> {
    list.iter()
        .map(|((k, t), v)| ((k.to_string(), *t), *v))
        .collect()
}

/// Windows in two segments for "a", its prefix-sharing neighbour "ab", and "b".
fn put_windows(w: &mut Win) {
    for (k, v, start) in [
        ("a", 1, 0),
        ("a", 2, SEGMENT),
        ("a", 3, 30_000),
        ("ab", 10, 0),
        ("ab", 20, SEGMENT),
        ("ab", 30, 90_000),
        ("b", 100, 30_000),
    ] {
        assert!(
            w.put(&s(k), &v, start).unwrap(),
            "{k}@{start} is within retention"
        );
    }
}

fn window_put_fetch(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    put_windows(&mut w);
    for stage in ["pending", "committed"] {
        assert_eq!(
            w.fetch(&s("a"), 0, 120_000).unwrap(),
            vec![(0, 1), (30_000, 3), (SEGMENT, 2)],
            "{stage}: only key a, by start time"
        );
        assert_eq!(
            w.fetch(&s("a"), 30_000, SEGMENT).unwrap(),
            vec![(30_000, 3), (SEGMENT, 2)],
            "{stage}: inclusive bounds"
        );
        assert_eq!(w.fetch(&s("a"), 1, 29_999).unwrap(), vec![], "{stage}");
        assert_eq!(
            w.fetch(&s("a"), SEGMENT, 0).unwrap(),
            vec![],
            "{stage}: from > to"
        );
        assert_eq!(
            w.fetch(&s("ab"), 0, 120_000).unwrap(),
            vec![(0, 10), (SEGMENT, 20), (90_000, 30)],
            "{stage}: only key ab"
        );
        assert_eq!(w.fetch(&s("b"), 0, 120_000).unwrap(), vec![(30_000, 100)]);
        assert_eq!(w.fetch(&s("abc"), 0, 120_000).unwrap(), vec![], "{stage}");
        assert_eq!(w.fetch(&s(""), 0, 120_000).unwrap(), vec![], "{stage}");

        assert_eq!(w.fetch_one(&s("a"), 30_000).unwrap(), Some(3), "{stage}");
        assert_eq!(w.fetch_one(&s("a"), 30_001).unwrap(), None, "{stage}");
        assert_eq!(w.fetch_one(&s("ab"), 0).unwrap(), Some(10), "{stage}");
        assert_eq!(w.fetch_one(&s("ab"), 30_000).unwrap(), None, "{stage}");
        assert_eq!(w.fetch_one(&s("b"), 0).unwrap(), None, "{stage}");
        w.core_mut().commit(Some(1)).unwrap();
    }
    assert_eq!(w.core_mut().committed_offset().unwrap(), Some(1));

    // Overwrite one window; the others stay.
    assert!(w.put(&s("a"), &4, 30_000).unwrap());
    assert_eq!(
        w.fetch(&s("a"), 0, 120_000).unwrap(),
        vec![(0, 1), (30_000, 4), (SEGMENT, 2)]
    );
    w.core_mut().drop_uncommitted();
    assert_eq!(w.fetch_one(&s("a"), 30_000).unwrap(), Some(3));
}
conformance!(window_put_fetch: window_put_fetch_rocksdb, window_put_fetch_memory);

fn window_fetch_all(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    put_windows(&mut w);
    for stage in ["pending", "committed"] {
        let mut all = w.fetch_all(0, 120_000).unwrap();
        all.sort();
        assert_eq!(
            all,
            windows(&[
                (("a", 0), 1),
                (("a", 30_000), 3),
                (("a", SEGMENT), 2),
                (("ab", 0), 10),
                (("ab", SEGMENT), 20),
                (("ab", 90_000), 30),
                (("b", 30_000), 100),
            ]),
            "{stage}"
        );
        let mut some = w.fetch_all(30_000, SEGMENT).unwrap();
        some.sort();
        assert_eq!(
            some,
            windows(&[
                (("a", 30_000), 3),
                (("a", SEGMENT), 2),
                (("ab", SEGMENT), 20),
                (("b", 30_000), 100),
            ]),
            "{stage}: starts in [from, to] only"
        );
        assert_eq!(w.fetch_all(1, 29_999).unwrap(), vec![], "{stage}");
        assert_eq!(
            w.fetch_all(SEGMENT, 0).unwrap(),
            vec![],
            "{stage}: from > to"
        );
        w.core_mut().commit(None).unwrap();
    }
}
conformance!(window_fetch_all: window_fetch_all_rocksdb, window_fetch_all_memory);

/// `fetch_all` documents its order: "by segment then key" (and by start within a key).
fn window_fetch_all_order(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    put_windows(&mut w);
    w.core_mut().commit(None).unwrap();
    assert_eq!(
        w.fetch_all(0, 120_000).unwrap(),
        windows(&[
            (("a", 0), 1),
            (("a", 30_000), 3),
            (("ab", 0), 10),
            (("b", 30_000), 100),
            (("a", SEGMENT), 2),
            (("ab", SEGMENT), 20),
            (("ab", 90_000), 30),
        ])
    );
}
conformance!(
    window_fetch_all_order:
    window_fetch_all_order_rocksdb,
    window_fetch_all_order_memory
);

fn window_drops_expired_put(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    assert!(w.put(&s("a"), &1, 0).unwrap());
    assert!(w.put(&s("a"), &2, 300_000).unwrap());
    // Stream time (largest start) 300 000, retention 120 000: anything at or before 180 000
    // is expired (Kafka Streams' window stores: `start <= stream time - retention`).
    assert!(
        !w.put(&s("a"), &3, 100_000).unwrap(),
        "older than the retention"
    );
    assert!(
        !w.put(&s("b"), &4, 180_000).unwrap(),
        "exactly at the retention"
    );
    assert!(
        w.put(&s("b"), &5, 180_001).unwrap(),
        "just within the retention"
    );
    assert!(w.put(&s("b"), &6, 250_000).unwrap());
    for stage in ["pending", "committed"] {
        assert_eq!(w.fetch_one(&s("a"), 100_000).unwrap(), None, "{stage}");
        assert_eq!(w.fetch_one(&s("b"), 180_000).unwrap(), None, "{stage}");
        assert_eq!(
            w.fetch(&s("b"), 0, 400_000).unwrap(),
            vec![(180_001, 5), (250_000, 6)],
            "{stage}"
        );
        w.core_mut().commit(None).unwrap();
    }
}
conformance!(window_drops_expired_put: window_drops_expired_put_rocksdb, window_drops_expired_put_memory);

fn window_segment_expiry(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    assert!(w.put(&s("a"), &1, 0).unwrap());
    assert!(w.put(&s("ab"), &2, 30_000).unwrap());
    assert!(w.put(&s("b"), &3, 100_000).unwrap());
    w.core_mut().commit(None).unwrap();
    w.state_store().flush().unwrap();
    assert_eq!(
        w.fetch_all(0, 400_000).unwrap().len(),
        3,
        "stream time 100 000 is within the retention of everything"
    );

    assert!(w.put(&s("a"), &4, 200_000).unwrap());
    w.core_mut().commit(None).unwrap();
    let mut before = w.fetch_all(0, 400_000).unwrap();
    before.sort();
    assert_eq!(
        before,
        windows(&[
            (("a", 0), 1),
            (("a", 200_000), 4),
            (("ab", 30_000), 2),
            (("b", 100_000), 3)
        ]),
        "nothing expires before flush"
    );

    // Stream time 200 000 - retention 120 000 = 80 000: segment 0 ([0, 60 000)) is expired,
    // segment 1 ([60 000, 120 000)) still holds live data.
    w.state_store().flush().unwrap();
    let mut after = w.fetch_all(0, 400_000).unwrap();
    after.sort();
    assert_eq!(after, windows(&[(("a", 200_000), 4), (("b", 100_000), 3)]));
    assert_eq!(w.fetch(&s("a"), 0, 400_000).unwrap(), vec![(200_000, 4)]);
    assert_eq!(w.fetch_one(&s("ab"), 30_000).unwrap(), None);
    w.core_mut().commit(None).unwrap();
    assert_eq!(w.fetch_all(0, 400_000).unwrap().len(), 2);
}
conformance!(window_segment_expiry: window_segment_expiry_rocksdb, window_segment_expiry_memory);

/// The runtime's commit is `flush()` (expiry) then `commit()`: writes of the same commit
/// interval that fell out of the retention must not come back with the commit.
fn window_expiry_of_uncommitted(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    assert!(w.put(&s("a"), &1, 0).unwrap()); // accepted: stream time was 0
    assert!(w.put(&s("a"), &2, 300_000).unwrap());
    w.state_store().flush().unwrap();
    w.core_mut().commit(None).unwrap();
    assert_eq!(
        w.fetch_all(0, 400_000).unwrap(),
        windows(&[(("a", 300_000), 2)]),
        "segment 0 expired at stream time 300 000"
    );
    assert_eq!(w.fetch_one(&s("a"), 0).unwrap(), None);
}
conformance!(
    window_expiry_of_uncommitted:

    window_expiry_of_uncommitted_rocksdb,

    window_expiry_of_uncommitted_memory
);

/// Expiry is part of the held-back write (issue 9, item 1): a flush that expires segments and
/// a transaction that then aborts (`drop_uncommitted`) must leave the committed windows in
/// place, in memory and on disk; reads between flush and commit already miss the expired
/// windows; the commit applies the expiry in the same write as everything else.
fn window_expiry_held_back_until_commit(persistent: bool) {
    let env = Env::new(persistent);
    {
        let mut w = env.window(win_builder("win"));
        assert!(w.put(&s("a"), &1, 0).unwrap());
        w.core_mut().commit(Some(0)).unwrap();
        assert!(w.put(&s("a"), &2, 300_000).unwrap());
        w.state_store().flush().unwrap();
        assert_eq!(
            w.fetch_one(&s("a"), 0).unwrap(),
            None,
            "after flush the expired window is not read"
        );
        assert_eq!(w.fetch(&s("a"), 0, 400_000).unwrap(), vec![(300_000, 2)]);
        // The transaction aborts: nothing of this commit interval may have reached the store.
        w.core_mut().drop_uncommitted();
        assert_eq!(
            w.core_mut().committed_offset().unwrap(),
            Some(0),
            "the stored offset is the last commit's"
        );
    }
    let mut w = env.window(win_builder("win"));
    if persistent {
        assert_eq!(
            w.fetch(&s("a"), 0, 400_000).unwrap(),
            vec![(0, 1)],
            "an aborted expiry leaves the committed window on disk"
        );
    }
    // The same again, committed this time: the expiry lands with the commit.
    assert!(w.put(&s("a"), &1, 0).unwrap());
    w.core_mut().commit(Some(1)).unwrap();
    assert!(w.put(&s("a"), &2, 300_000).unwrap());
    w.state_store().flush().unwrap();
    w.core_mut().commit(Some(2)).unwrap();
    assert_eq!(w.fetch(&s("a"), 0, 400_000).unwrap(), vec![(300_000, 2)]);
    drop(w);
    let w = env.window(win_builder("win"));
    if persistent {
        assert_eq!(w.fetch(&s("a"), 0, 400_000).unwrap(), vec![(300_000, 2)]);
    }
}
conformance!(
    window_expiry_held_back_until_commit:

    window_expiry_held_back_until_commit_rocksdb,

    window_expiry_held_back_until_commit_memory
);

/// The session-store side of item 1: an aborted expiry leaves committed sessions in place.
fn session_expiry_held_back_until_commit(persistent: bool) {
    let env = Env::new(persistent);
    let mut st = env.session(sess_builder("sess"));
    st.put(&s("a"), 0, 10, &1).unwrap();
    st.core_mut().commit(Some(0)).unwrap();
    st.put(&s("a"), 300_000, 300_010, &2).unwrap();
    st.state_store().flush().unwrap();
    assert_eq!(
        st.find_sessions(&s("a"), 0, i64::MAX).unwrap(),
        vec![((300_000, 300_010), 2)],
        "after flush the expired session is not read"
    );
    st.core_mut().drop_uncommitted();
    assert_eq!(
        st.find_sessions(&s("a"), 0, i64::MAX).unwrap(),
        vec![((0, 10), 1)],
        "an aborted expiry leaves the committed session"
    );
}
conformance!(
    session_expiry_held_back_until_commit:

    session_expiry_held_back_until_commit_rocksdb,

    session_expiry_held_back_until_commit_memory
);

fn window_changelog(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    assert!(w.put(&s("a"), &1, 0).unwrap());
    assert!(w.put(&s("a"), &2, 0).unwrap());
    assert!(w.put(&s("ab"), &3, SEGMENT).unwrap());
    let out = w.core_mut().take_outbox();
    let values: Vec<Option<Vec<u8>>> = out.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        values,
        vec![
            Some(1u64.to_be_bytes().to_vec()),
            Some(2u64.to_be_bytes().to_vec()),
            Some(3u64.to_be_bytes().to_vec())
        ]
    );
    assert_eq!(out[0].0, out[1].0, "same window, same changelog key");
    assert_ne!(out[0].0, out[2].0);

    let mut cached = env.window(win_builder("cached").with_caching(true));
    assert!(cached.put(&s("a"), &1, 0).unwrap());
    assert!(cached.put(&s("a"), &2, 0).unwrap());
    assert_eq!(cached.core_mut().take_outbox(), vec![]);
    let flushed = cached.core_mut().cache_flush();
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].1, Some(2u64.to_be_bytes().to_vec()));

    let mut unlogged = env.window(win_builder("unlogged").with_logging(false));
    assert!(unlogged.put(&s("a"), &1, 0).unwrap());
    assert_eq!(unlogged.core_mut().take_outbox(), vec![]);
    assert_eq!(unlogged.core_mut().cache_flush(), vec![]);
}
conformance!(window_changelog: window_changelog_rocksdb, window_changelog_memory);

/// `fetch` and `fetch_all` take any `[from, to]`; an open-ended `to` (i64::MAX, as in Kafka
/// Streams' `fetch(key, 0, Long.MAX_VALUE)`) must not walk every possible segment id.
fn window_fetch_to_max(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    put_windows(&mut w);
    w.core_mut().commit(None).unwrap();
    let w = std::sync::Mutex::new(w);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let w = w.lock().unwrap();
            let fetched = w.fetch(&s("a"), 0, i64::MAX).unwrap();
            let all = w.fetch_all(0, i64::MAX).unwrap().len();
            let _ = tx.send((fetched, all));
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok((fetched, all)) => {
                assert_eq!(fetched, vec![(0, 1), (30_000, 3), (SEGMENT, 2)]);
                assert_eq!(all, 7);
                worker.join().unwrap();
            }
            // The scope would wait for the worker forever: fail the whole test process now.
            Err(_) => {
                // Not eprintln!: the harness's capture is lost on exit.
                let _ = writeln!(
                    std::io::stderr(),
                    "fetch(key, 0, i64::MAX) did not return within 10 s"
                );
                // Exiting skips the temp dir's Drop.
                let _ = std::fs::remove_dir_all(env.dir.path());
                std::process::exit(101);
            }
        }
    });
}
conformance!(
    window_fetch_to_max:

    window_fetch_to_max_rocksdb,

    window_fetch_to_max_memory
);

fn window_reopen(persistent: bool) {
    let env = Env::new(persistent);
    {
        let mut w = env.window(win_builder("win"));
        put_windows(&mut w);
        w.core_mut().commit(Some(12)).unwrap();
        assert!(w.put(&s("a"), &99, 90_000).unwrap()); // uncommitted
        drop(w);
    }
    let mut w = env.window(win_builder("win"));
    if persistent {
        assert_eq!(
            w.fetch(&s("a"), 0, 120_000).unwrap(),
            vec![(0, 1), (30_000, 3), (SEGMENT, 2)]
        );
        assert_eq!(w.fetch_all(0, 120_000).unwrap().len(), 7);
        assert_eq!(w.core_mut().committed_offset().unwrap(), Some(12));
    } else {
        assert_eq!(w.fetch_all(0, 120_000).unwrap(), vec![]);
        assert_eq!(w.core_mut().committed_offset().unwrap(), None);
    }
}
conformance!(window_reopen: window_reopen_rocksdb, window_reopen_memory);

// ---------------------------------------------------------------------------------------------
// Session stores
// ---------------------------------------------------------------------------------------------

type Sess = SessionStore<String, u64>;

fn sess_builder(name: &str) -> SessionStoreBuilder<String, u64> {
    SessionStore::<String, u64>::builder(name, RETENTION, Utf8, BigEndian)
}

fn put_sessions(st: &mut Sess) {
    for (k, start, end, v) in [
        ("a", 0, 10_000, 1),
        ("a", 20_000, 30_000, 2),
        ("a", 100_000, 150_000, 3), // ends two segments later
        ("ab", 5_000, 25_000, 10),
        ("b", 0, 50_000, 20),
    ] {
        st.put(&s(k), start, end, &v).unwrap();
    }
}

fn session_find_sessions(persistent: bool) {
    let env = Env::new(persistent);
    let mut st = env.session(sess_builder("sess"));
    put_sessions(&mut st);
    for stage in ["pending", "committed"] {
        assert_eq!(
            st.find_sessions(&s("a"), 0, 200_000).unwrap(),
            vec![
                ((0, 10_000), 1),
                ((20_000, 30_000), 2),
                ((100_000, 150_000), 3)
            ],
            "{stage}: every session of a, by end"
        );
        assert_eq!(
            st.find_sessions(&s("a"), 15_000, 25_000).unwrap(),
            vec![((20_000, 30_000), 2)],
            "{stage}"
        );
        assert_eq!(
            st.find_sessions(&s("a"), 10_000, 20_000).unwrap(),
            vec![((0, 10_000), 1), ((20_000, 30_000), 2)],
            "{stage}: both bounds inclusive"
        );
        assert_eq!(
            st.find_sessions(&s("a"), 10_001, 19_999).unwrap(),
            vec![],
            "{stage}: the gap between sessions"
        );
        assert_eq!(st.find_sessions(&s("a"), 31_000, 99_999).unwrap(), vec![]);
        assert_eq!(
            st.find_sessions(&s("a"), 140_000, 140_000).unwrap(),
            vec![((100_000, 150_000), 3)],
            "{stage}: a session spanning segments"
        );
        assert_eq!(
            st.find_sessions(&s("a"), 150_001, 300_000).unwrap(),
            vec![],
            "{stage}"
        );
        assert_eq!(
            st.find_sessions(&s("ab"), 0, 200_000).unwrap(),
            vec![((5_000, 25_000), 10)],
            "{stage}: only key ab"
        );
        assert_eq!(
            st.find_sessions(&s("b"), 0, 200_000).unwrap(),
            vec![((0, 50_000), 20)]
        );
        assert_eq!(st.find_sessions(&s("abc"), 0, 200_000).unwrap(), vec![]);
        assert_eq!(st.find_sessions(&s(""), 0, 200_000).unwrap(), vec![]);
        st.core_mut().commit(Some(5)).unwrap();
    }
    assert_eq!(st.core_mut().committed_offset().unwrap(), Some(5));
}
conformance!(session_find_sessions: session_find_sessions_rocksdb, session_find_sessions_memory);

fn session_remove(persistent: bool) {
    let env = Env::new(persistent);
    let mut st = env.session(sess_builder("sess"));
    put_sessions(&mut st);
    st.core_mut().commit(None).unwrap();

    st.remove(&s("a"), 20_000, 30_000).unwrap();
    st.remove(&s("ab"), 5_000, 25_000).unwrap();
    for stage in ["pending", "committed"] {
        assert_eq!(
            st.find_sessions(&s("a"), 0, 200_000).unwrap(),
            vec![((0, 10_000), 1), ((100_000, 150_000), 3)],
            "{stage}"
        );
        assert_eq!(st.find_sessions(&s("a"), 15_000, 25_000).unwrap(), vec![]);
        assert_eq!(st.find_sessions(&s("ab"), 0, 200_000).unwrap(), vec![]);
        st.core_mut().commit(None).unwrap();
    }

    // A removal that is dropped leaves the session; a merge (remove + put) replaces it.
    st.remove(&s("a"), 0, 10_000).unwrap();
    st.core_mut().drop_uncommitted();
    assert_eq!(
        st.find_sessions(&s("a"), 0, 10_000).unwrap(),
        vec![((0, 10_000), 1)]
    );
    st.remove(&s("a"), 0, 10_000).unwrap();
    st.put(&s("a"), 0, 12_000, &4).unwrap();
    assert_eq!(
        st.find_sessions(&s("a"), 0, 20_000).unwrap(),
        vec![((0, 12_000), 4)]
    );
}
conformance!(session_remove: session_remove_rocksdb, session_remove_memory);

fn session_reopen(persistent: bool) {
    let env = Env::new(persistent);
    {
        let mut st = env.session(sess_builder("sess"));
        put_sessions(&mut st);
        st.core_mut().commit(Some(9)).unwrap();
        st.put(&s("a"), 40_000, 45_000, &7).unwrap(); // uncommitted
        drop(st);
    }
    let mut st = env.session(sess_builder("sess"));
    if persistent {
        assert_eq!(st.core_mut().committed_offset().unwrap(), Some(9));
        assert_eq!(
            st.find_sessions(&s("a"), 0, 200_000).unwrap(),
            vec![
                ((0, 10_000), 1),
                ((20_000, 30_000), 2),
                ((100_000, 150_000), 3)
            ],
            "committed sessions are back, in every segment"
        );
    } else {
        assert_eq!(st.core_mut().committed_offset().unwrap(), None);
        assert_eq!(st.find_sessions(&s("a"), 0, 200_000).unwrap(), vec![]);
    }
}
conformance!(
    session_reopen:

    session_reopen_rocksdb,
    session_reopen_memory
);

fn session_segment_expiry(persistent: bool) {
    let env = Env::new(persistent);
    let mut st = env.session(sess_builder("sess"));
    put_sessions(&mut st);
    st.core_mut().commit(None).unwrap();
    st.state_store().flush().unwrap();
    assert_eq!(
        st.find_sessions(&s("a"), 0, 300_000).unwrap().len(),
        3,
        "stream time 150 000: nothing expired yet"
    );

    st.put(&s("c"), 190_000, 200_000, &30).unwrap();
    st.core_mut().commit(None).unwrap();
    // Stream time (largest end) 200 000 - retention 120 000 = 80 000: the segment of ends in
    // [0, 60 000) is expired; [60 000, 120 000) and later stay.
    st.state_store().flush().unwrap();
    assert_eq!(
        st.find_sessions(&s("a"), 0, 300_000).unwrap(),
        vec![((100_000, 150_000), 3)]
    );
    assert_eq!(st.find_sessions(&s("ab"), 0, 300_000).unwrap(), vec![]);
    assert_eq!(st.find_sessions(&s("b"), 0, 300_000).unwrap(), vec![]);
    assert_eq!(
        st.find_sessions(&s("c"), 0, 300_000).unwrap(),
        vec![((190_000, 200_000), 30)]
    );
}
conformance!(session_segment_expiry: session_segment_expiry_rocksdb, session_segment_expiry_memory);

fn kv_wipe(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        kv.put(&s(k), &(i as u64)).unwrap();
    }
    kv.core_mut().commit(Some(7)).unwrap();
    assert_eq!(kv.len().unwrap(), 3);
    kv.core().bytes().wipe().unwrap();
    assert_eq!(
        kv.len().unwrap(),
        0,
        "every entry gone, the last key included"
    );
    assert_eq!(kv.core().committed_offset().unwrap(), None);
    kv.put(&s("d"), &9).unwrap();
    kv.core_mut().commit(Some(1)).unwrap();
    assert_eq!(scan(kv.all()), vec![(s("d"), 9)]);
    assert_eq!(kv.core().committed_offset().unwrap(), Some(1));
}
conformance!(kv_wipe: kv_wipe_rocksdb, kv_wipe_memory);

/// A task instance whose store was opened again by a newer instance of its task (the task
/// moved to another thread while a view kept the database open) may not write any more.
#[test]
fn only_the_newest_rocksdb_instance_of_a_store_writes() {
    use streams_core::store::{BytesStore, RocksBytes};
    let dir = TempDir::new();
    let rocks = RocksResources::default();
    let old = RocksBytes::open("s", &dir.path().join("s"), &rocks).unwrap();
    old.write(vec![(b"a".to_vec(), Some(b"1".to_vec()))], Some(1), true)
        .unwrap();
    let new = RocksBytes::open("s", &dir.path().join("s"), &rocks).unwrap();
    let refused = old.write(vec![(b"a".to_vec(), Some(b"2".to_vec()))], Some(2), true);
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("opened again by a newer instance"),
        "the old instance may not write"
    );
    assert_eq!(new.get(b"a").unwrap(), Some(b"1".to_vec()));
    new.write(vec![(b"a".to_vec(), Some(b"3".to_vec()))], Some(3), true)
        .unwrap();
    assert_eq!(
        old.get(b"a").unwrap(),
        Some(b"3".to_vec()),
        "it still reads"
    );
    assert_eq!(new.committed_offset().unwrap(), Some(3));
}

/// Scans read the committed entries in chunks of 1,024 and merge the held-back writes in:
/// a scan over several chunks, with held-back deletes, overwrites and new keys on both sides
/// of the chunk boundaries, equals a map computed alongside.
fn kv_scan_across_chunks(persistent: bool) {
    let env = Env::new(persistent);
    let mut kv = env.kv(kv_builder("kv"));
    let mut oracle = std::collections::BTreeMap::new();
    for i in 0..3000u64 {
        kv.put(&format!("k{i:05}"), &i).unwrap();
        oracle.insert(format!("k{i:05}"), i);
    }
    kv.core_mut().commit(None).unwrap();
    for i in 0..3000u64 {
        let key = format!("k{i:05}");
        if i % 3 == 0 {
            kv.delete(&key).unwrap();
            oracle.remove(&key);
        } else if i % 5 == 0 {
            kv.put(&key, &(i * 10)).unwrap();
            oracle.insert(key, i * 10);
        }
        if i % 7 == 0 {
            let between = format!("k{i:05}x");
            kv.put(&between, &1).unwrap();
            oracle.insert(between, 1);
        }
    }
    let all: Vec<(String, u64)> = kv
        .all()
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    assert_eq!(all, oracle.clone().into_iter().collect::<Vec<_>>());
    assert_eq!(kv.len().unwrap(), oracle.len());
    let (from, to) = (s("k01000"), s("k02500"));
    let ranged: Vec<(String, u64)> = kv
        .range(&from, &to)
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    let expected: Vec<(String, u64)> = oracle
        .range(from.clone()..=to.clone())
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(ranged, expected);
    kv.core_mut().commit(None).unwrap();
    assert_eq!(kv.len().unwrap(), oracle.len(), "the same once committed");
}
conformance!(kv_scan_across_chunks: kv_scan_across_chunks_rocksdb, kv_scan_across_chunks_memory);

/// Windows far apart in time (one at the epoch, one at today's epoch milliseconds, millions of
/// segment intervals later) are both found by a fetch over the whole range: the store visits
/// the segments that hold data, not every segment id in between (before, a fetch like this
/// walked about 30 million empty segments and an application using it stopped making
/// progress).
fn window_fetch_across_a_huge_empty_span(persistent: bool) {
    let env = Env::new(persistent);
    let mut w = env.window(win_builder("win"));
    let now = 1_796_000_000_000_i64;
    assert!(w.put(&s("a"), &1, 0).unwrap());
    assert!(w.put(&s("a"), &2, now).unwrap());
    for stage in ["pending", "committed"] {
        // A key's fetch leaves out the window at 0, expired by stream time `now` (as Kafka
        // Streams' window stores do); a fetch over every key walks the whole span.
        assert_eq!(w.fetch(&s("a"), 0, now).unwrap(), vec![(now, 2)], "{stage}");
        assert_eq!(
            w.fetch_all(0, now).unwrap(),
            windows(&[(("a", 0), 1), (("a", now), 2)]),
            "{stage}"
        );
        w.core_mut().commit(None).unwrap();
    }
}
conformance!(
    window_fetch_across_a_huge_empty_span:
    window_fetch_across_a_huge_empty_span_rocksdb,
    window_fetch_across_a_huge_empty_span_memory
);

fn session_find_across_a_huge_empty_span(persistent: bool) {
    let env = Env::new(persistent);
    let mut st = env.session(SessionStore::<String, u64>::builder(
        "sess", RETENTION, Utf8, BigEndian,
    ));
    let now = 1_796_000_000_000_i64;
    st.put(&s("a"), 0, 10, &1).unwrap();
    st.put(&s("a"), now, now + 10, &2).unwrap();
    assert_eq!(
        st.find_sessions(&s("a"), 0, now).unwrap(),
        vec![((0, 10), 1), ((now, now + 10), 2)]
    );
}
conformance!(
    session_find_across_a_huge_empty_span:
    session_find_across_a_huge_empty_span_rocksdb,
    session_find_across_a_huge_empty_span_memory
);
