//! The per-partition transaction index: which transactions of a partition's log were aborted,
//! built by reading the log itself (data batches and control markers), as Kafka's own broker
//! keeps it beside each log segment.

use std::collections::HashMap;

use super::batches::{BatchInfo, ControlType};

/// One aborted transaction in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer that wrote it.
    pub producer_id: i64,
    /// Offset of its first record in this partition.
    pub first_offset: i64,
    /// Offset of its ABORT marker; or, when the log has none, the offset just before the first
    /// batch of the producer's next epoch.
    pub marker_offset: i64,
    /// Whether an ABORT marker is in the log. A transaction the broker aborted by fencing
    /// (a new producer with the same transactional id) must have one; nisshi's sqlite engine
    /// sometimes writes none, and the index then ends the transaction at the epoch bump.
    pub has_marker: bool,
}

/// What is known of one partition's transactions, from offset 0 (or the log start) up to
/// [`PartitionIndex::next`].
#[derive(Debug, Default)]
pub struct PartitionIndex {
    next: i64,
    /// Producer id → (first offset, producer epoch) of its transaction that has no marker yet.
    open: HashMap<i64, (i64, i16)>,
    /// In marker order.
    aborted: Vec<AbortedTxn>,
    /// The longest (marker − first) seen; bounds the search for overlapping transactions.
    max_span: i64,
}

impl PartitionIndex {
    /// The first offset not yet indexed.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// The number of aborted transactions indexed.
    pub fn aborted_count(&self) -> usize {
        self.aborted.len()
    }

    /// Forgets everything: the log was lost (a broker on the memory engine restarted).
    pub fn reset(&mut self) {
        *self = PartitionIndex::default();
    }

    /// The log starts later than the index reached (records were deleted): nothing before
    /// `offset` can be read any more, so indexing goes on from there.
    pub fn skip_to(&mut self, offset: i64) {
        if offset > self.next {
            self.next = offset;
        }
    }

    /// Indexes `batches` (in log order, as a fetch returned them) if they continue the index
    /// without a gap; batches already indexed are passed over. Returns false, and changes
    /// nothing, when the first new batch starts after [`next`](Self::next): what lies between
    /// is unknown.
    pub fn apply_contiguous(&mut self, batches: &[BatchInfo]) -> bool {
        match batches.iter().find(|b| b.last_offset >= self.next) {
            Some(first) if first.base_offset > self.next => false,
            _ => {
                self.apply_from_next(batches);
                true
            }
        }
    }

    /// Indexes `batches` returned by a fetch *at* [`next`](Self::next): a gap before the first
    /// one is real (those offsets hold nothing readable).
    pub fn apply_from_next(&mut self, batches: &[BatchInfo]) {
        for b in batches {
            if b.last_offset < self.next {
                continue;
            }
            if b.transactional {
                // A higher epoch of the same producer means its open transaction was aborted
                // when the new producer initialised, marker or not.
                if let Some(&(first, epoch)) = self.open.get(&b.producer_id) {
                    if b.producer_epoch > epoch {
                        self.open.remove(&b.producer_id);
                        self.push_aborted(b.producer_id, first, b.base_offset - 1, false);
                    }
                }
                match b.control {
                    None => {
                        self.open
                            .entry(b.producer_id)
                            .or_insert((b.base_offset, b.producer_epoch));
                    }
                    Some(kind) => {
                        if let Some((first, _)) = self.open.remove(&b.producer_id) {
                            if kind == ControlType::Abort {
                                self.push_aborted(b.producer_id, first, b.base_offset, true);
                            }
                        }
                    }
                }
            }
            self.next = b.last_offset + 1;
        }
    }

    fn push_aborted(&mut self, producer_id: i64, first: i64, marker: i64, has_marker: bool) {
        self.max_span = self.max_span.max(marker - first);
        self.aborted.push(AbortedTxn {
            producer_id,
            first_offset: first,
            marker_offset: marker,
            has_marker,
        });
    }

    /// Whether the fate of every transaction with records at or below `last_offset` is known.
    pub fn decided_through(&self, last_offset: i64) -> bool {
        self.next > last_offset && self.open.values().all(|(first, _)| *first > last_offset)
    }

    /// The first offset of the earliest transaction that is still open, if any: the last stable
    /// offset, as far as the index knows.
    pub fn first_open_offset(&self) -> Option<i64> {
        self.open.values().map(|(first, _)| *first).min()
    }

    /// The aborted transactions that have records in `[first, last]`: what a Fetch response
    /// carrying that range must list for read_committed readers.
    pub fn aborted_overlapping(&self, first: i64, last: i64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|t| t.marker_offset < first);
        self.aborted[start..]
            .iter()
            .take_while(|t| t.marker_offset <= last.saturating_add(self.max_span))
            .filter(|t| t.first_offset <= last)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(base: i64, count: i64, pid: i64) -> BatchInfo {
        data_at_epoch(base, count, pid, 0)
    }

    fn data_at_epoch(base: i64, count: i64, pid: i64, epoch: i16) -> BatchInfo {
        BatchInfo {
            base_offset: base,
            last_offset: base + count - 1,
            producer_id: pid,
            producer_epoch: epoch,
            transactional: true,
            control: None,
            end_position: 0,
        }
    }

    fn marker(offset: i64, pid: i64, kind: ControlType) -> BatchInfo {
        BatchInfo {
            base_offset: offset,
            last_offset: offset,
            producer_id: pid,
            producer_epoch: 0,
            transactional: true,
            control: Some(kind),
            end_position: 0,
        }
    }

    #[test]
    fn interleaved_transactions() {
        // pid 1: 0-1 and 5 aborted at 7; pid 2: 2-3 committed at 4; pid 3: 6 committed at 8.
        let log = [
            data(0, 2, 1),
            data(2, 2, 2),
            marker(4, 2, ControlType::Commit),
            data(5, 1, 1),
            data(6, 1, 3),
            marker(7, 1, ControlType::Abort),
            marker(8, 3, ControlType::Commit),
        ];
        let mut idx = PartitionIndex::default();
        assert!(idx.apply_contiguous(&log[..4]));
        assert!(!idx.decided_through(0), "pid 1 is still open");
        idx.apply_from_next(&log[4..]);
        assert!(idx.decided_through(8));
        let aborted = idx.aborted_overlapping(0, 8);
        assert_eq!(
            aborted,
            [AbortedTxn {
                producer_id: 1,
                first_offset: 0,
                marker_offset: 7,
                has_marker: true,
            }]
        );
        assert_eq!(idx.aborted_overlapping(5, 6).len(), 1);
        assert!(
            idx.aborted_overlapping(8, 20).is_empty(),
            "ended before the range"
        );
    }

    #[test]
    fn a_gap_is_not_applied_unless_fetched_at_next() {
        let mut idx = PartitionIndex::default();
        assert!(!idx.apply_contiguous(&[data(10, 1, 1)]));
        assert_eq!(idx.next(), 0);
        idx.apply_from_next(&[data(10, 1, 1)]);
        assert_eq!(idx.next(), 11);
        // Re-applying what is already indexed changes nothing.
        assert!(idx.apply_contiguous(&[data(10, 1, 1)]));
        assert_eq!(idx.next(), 11);
    }

    #[test]
    fn a_range_inside_a_long_aborted_transaction() {
        let mut idx = PartitionIndex::default();
        idx.apply_from_next(&[
            data(0, 100, 4),
            data(100, 1, 5),
            marker(101, 5, ControlType::Abort),
            marker(102, 4, ControlType::Abort),
        ]);
        let got = idx.aborted_overlapping(50, 60);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].producer_id, 4);
    }

    #[test]
    fn an_epoch_bump_without_marker_aborts_the_open_transaction() {
        let mut idx = PartitionIndex::default();
        idx.apply_from_next(&[
            data_at_epoch(0, 2, 7, 0),
            data(2, 1, 8),
            data_at_epoch(3, 1, 7, 1),
            BatchInfo {
                producer_epoch: 1,
                ..marker(4, 7, ControlType::Commit)
            },
            marker(5, 8, ControlType::Commit),
        ]);
        assert!(idx.decided_through(5));
        assert_eq!(
            idx.aborted_overlapping(0, 5),
            [AbortedTxn {
                producer_id: 7,
                first_offset: 0,
                marker_offset: 2,
                has_marker: false,
            }]
        );
    }
}
