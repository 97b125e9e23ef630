//! Deleting the local state of tasks this instance stopped owning, once a delay has passed
//! (Kafka Streams' `state.cleanup.delay.ms`). A copy of a task's stores that sat unowned while
//! another instance wrote the changelog cannot be trusted: compaction may have removed the
//! tombstones of keys deleted meanwhile, and restoring from the copy's stored offset would bring
//! those keys back. Within the delay the copy is kept (a quick restart or a task bouncing back
//! restores only the tail); after it the copy is deleted and the task restores from the start.
//!
//! Every task directory holds a marker with the last time this instance is known to have owned
//! the task: written when the task is created and closed, and refreshed while it is owned.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::now_ms;

const MARKER: &str = ".kstreams-owned-at";

/// The lock of an application's state directory in this process: held while a thread
/// creates tasks and while the cleaner deletes directories, so that no directory is deleted
/// under a task that is being opened.
pub(crate) fn dir_lock(app_dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> =
        LazyLock::new(Default::default);
    LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(app_dir.to_path_buf())
        .or_default()
        .clone()
}

/// How often the cleaner runs (and refreshes the markers of owned tasks).
pub(crate) fn period(delay: Duration) -> Duration {
    (delay / 2).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Records that this instance owns (or owned until now) the task in `dir`.
pub(crate) fn mark_owned(dir: &Path) {
    if dir.is_dir() {
        if let Err(e) = std::fs::write(dir.join(MARKER), now_ms().to_string()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the task's ownership marker");
        }
    }
}

/// When this instance last owned the task in `dir` (epoch ms): the marker's time, or for a
/// directory without one (state from before markers) its newest file's modification time.
fn last_owned(dir: &Path) -> Option<i64> {
    if let Some(t) = std::fs::read_to_string(dir.join(MARKER))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Some(t);
    }
    let mut newest = None;
    let mut visit = vec![dir.to_path_buf()];
    while let Some(d) = visit.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                visit.push(entry.path());
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64);
            newest = newest.max(modified);
        }
    }
    newest
}

/// Whether `name` is a task directory's name (`<sub-topology>_<partition>`).
fn is_task_dir(name: &str) -> bool {
    name.split_once('_').is_some_and(|(s, p)| {
        !s.is_empty()
            && !p.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && p.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Refreshes the markers of the `owned` tasks and deletes the other task directories under
/// `app_dir` that were last owned longer than `delay` ago. Returns the deleted tasks.
/// The caller holds the [`dir_lock`].
pub(crate) fn clean(app_dir: &Path, owned: &HashSet<String>, delay: Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(app_dir) else {
        return vec![];
    };
    let now = now_ms();
    let delay_ms = delay.as_millis().min(i64::MAX as u128) as i64;
    let mut deleted = vec![];
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !is_task_dir(&name) || !entry.path().is_dir() {
            continue;
        }
        if owned.contains(&name) {
            mark_owned(&entry.path());
            continue;
        }
        let Some(last) = last_owned(&entry.path()) else {
            continue;
        };
        if now.saturating_sub(last) <= delay_ms || crate::store::is_open_under(&entry.path()) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(task = %name, unowned_ms = now - last, "deleted the state of a task not owned for longer than the cleanup delay");
                deleted.push(name);
            }
            Err(e) => {
                tracing::warn!(task = %name, error = %e, "cannot delete the state of an unowned task")
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_dir_names() {
        assert!(is_task_dir("0_1"));
        assert!(is_task_dir("12_345"));
        assert!(!is_task_dir("instance.id"));
        assert!(!is_task_dir(".lock"));
        assert!(!is_task_dir("0_"));
        assert!(!is_task_dir("a_1"));
    }

    #[test]
    fn deletes_only_unowned_directories_older_than_the_delay() {
        let app = std::env::temp_dir().join(format!("kstreams-cleanup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&app);
        for t in ["0_0", "0_1", "0_2"] {
            std::fs::create_dir_all(app.join(t).join("store")).unwrap();
        }
        std::fs::write(app.join("instance.id"), "x").unwrap();
        let old = (now_ms() - 60_000).to_string();
        std::fs::write(app.join("0_0").join(MARKER), &old).unwrap();
        std::fs::write(app.join("0_1").join(MARKER), &old).unwrap();
        mark_owned(&app.join("0_2"));
        let owned: HashSet<String> = ["0_1".to_string()].into();
        let deleted = clean(&app, &owned, Duration::from_secs(30));
        assert_eq!(deleted, vec!["0_0".to_string()], "unowned for 60 s > 30 s");
        assert!(app.join("0_1").exists(), "owned: kept, marker refreshed");
        assert!(last_owned(&app.join("0_1")).unwrap() > now_ms() - 5_000);
        assert!(app.join("0_2").exists(), "released just now: kept");
        assert!(app.join("instance.id").exists());
        std::fs::remove_dir_all(&app).unwrap();
    }
}
