//! Per-shard metrics, exported in the Prometheus text format by `molly serve`.
//! Updated once per group or batch, never per event.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

use crate::durable::Outcome;

/// Latency buckets (seconds): 50 µs … 1 s.
const BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 1.0];

/// One shard's metrics (each carries the label `shard`).
#[derive(Debug)]
pub struct ShardMetrics {
    /// Transfers created (`ok`).
    pub transfers_ok: IntCounter,
    /// Transfers rejected with a result code.
    pub transfers_rejected: IntCounter,
    /// Accounts created.
    pub accounts_created: IntCounter,
    /// Journal groups made durable.
    pub groups: IntCounter,
    /// Journal bytes written.
    pub journal_bytes: IntCounter,
    /// Write + fdatasync time per group.
    pub fsync_seconds: Histogram,
    /// Time from a write request leaving the inbox to its reply.
    pub batch_seconds: Histogram,
    /// Requests waiting in the inbox.
    pub inbox_depth: IntGauge,
    /// How long recovery took at start.
    pub recovery_seconds: Gauge,
    /// Snapshots written.
    pub snapshots: IntCounter,
    /// How long the last snapshot took to write (off the shard's thread).
    pub snapshot_seconds: Gauge,
    /// How long the shard stopped to take the last snapshot's state.
    pub snapshot_capture_seconds: Gauge,
    /// Full transfer blocks held in memory.
    pub transfer_blocks_memory: IntGauge,
    /// Full transfer blocks evicted to segment files.
    pub transfer_blocks_cold: IntGauge,
    /// Journal files on disk.
    pub journal_files: IntGauge,
    /// Bytes of the journal files on disk.
    pub journal_files_bytes: IntGauge,
    /// Journal files deleted once the kept snapshots covered them.
    pub journal_files_deleted: IntCounter,
    /// Deletions of covered journal files that failed (retried after the next snapshot).
    pub journal_delete_errors: IntCounter,
    /// New journal files that were a preallocated spare (see [`crate::prealloc`]).
    pub journal_files_preallocated: IntCounter,
    /// Spares that could not be written or renamed (the file was created instead).
    pub journal_spare_errors: IntCounter,
    /// Journal writes that went to glommio's busy-polled ring (IOPOLL): only
    /// on a device with poll queues (see `runtime::PROBE_NAME`).
    pub journal_writes_polled: IntCounter,
}

impl ShardMetrics {
    /// Metrics for `shard`.
    pub fn new(shard: usize) -> Self {
        let label = shard.to_string();
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("shard", &label);
        let hopts = |name: &str, help: &str| {
            HistogramOpts::new(name, help).const_label("shard", &label).buckets(BUCKETS.to_vec())
        };
        let counter = |name, help| IntCounter::with_opts(opts(name, help)).expect("valid counter");
        let gauge = |name, help| Gauge::with_opts(opts(name, help)).expect("valid gauge");
        let int_gauge = |name, help| IntGauge::with_opts(opts(name, help)).expect("valid gauge");
        let histogram = |name, help| Histogram::with_opts(hopts(name, help)).expect("valid histogram");
        Self {
            transfers_ok: counter("molly_transfers_created_total", "Transfers created (result ok)."),
            transfers_rejected: counter(
                "molly_transfers_rejected_total",
                "Transfers rejected with a result code.",
            ),
            accounts_created: counter("molly_accounts_created_total", "Accounts created."),
            groups: counter("molly_journal_groups_total", "Journal groups made durable."),
            journal_bytes: counter("molly_journal_bytes_total", "Journal bytes written."),
            fsync_seconds: histogram(
                "molly_journal_fsync_seconds",
                "Write plus fdatasync time of one journal group.",
            ),
            batch_seconds: histogram(
                "molly_batch_seconds",
                "Time from a write request leaving the inbox to its durable reply.",
            ),
            inbox_depth: int_gauge("molly_inbox_depth", "Requests waiting in the shard's inbox."),
            recovery_seconds: gauge(
                "molly_recovery_seconds",
                "Time the shard's journal recovery took at start.",
            ),
            snapshots: counter("molly_snapshots_total", "Snapshots written."),
            snapshot_seconds: gauge(
                "molly_snapshot_seconds",
                "How long the last snapshot took to write (on a background thread).",
            ),
            snapshot_capture_seconds: gauge(
                "molly_snapshot_capture_seconds",
                "How long the shard stopped to take the last snapshot's state.",
            ),
            transfer_blocks_memory: int_gauge(
                "molly_transfer_blocks_memory",
                "Full 8 MiB transfer blocks held in memory.",
            ),
            transfer_blocks_cold: int_gauge(
                "molly_transfer_blocks_cold",
                "Full 8 MiB transfer blocks evicted to segment files (read through a mapping).",
            ),
            journal_files: int_gauge("molly_journal_files", "Journal files on disk."),
            journal_files_bytes: int_gauge(
                "molly_journal_files_bytes",
                "Bytes of the journal files on disk.",
            ),
            journal_files_deleted: counter(
                "molly_journal_files_deleted_total",
                "Journal files deleted once the kept snapshots covered them.",
            ),
            journal_delete_errors: counter(
                "molly_journal_delete_errors_total",
                "Deletions of covered journal files that failed (retried after the next snapshot).",
            ),
            journal_files_preallocated: counter(
                "molly_journal_files_preallocated_total",
                "New journal files that were a spare written full of zeros ahead (group commits overwrite).",
            ),
            journal_spare_errors: counter(
                "molly_journal_spare_errors_total",
                "Spare journal files that could not be written or renamed (the file was created instead).",
            ),
            journal_writes_polled: counter(
                "molly_journal_writes_polled_total",
                "Journal writes sent to the busy-polled io_uring ring (IOPOLL; only on a device with poll queues).",
            ),
        }
    }

    /// Registers every metric with `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.transfers_ok.clone()))?;
        registry.register(Box::new(self.transfers_rejected.clone()))?;
        registry.register(Box::new(self.accounts_created.clone()))?;
        registry.register(Box::new(self.groups.clone()))?;
        registry.register(Box::new(self.journal_bytes.clone()))?;
        registry.register(Box::new(self.fsync_seconds.clone()))?;
        registry.register(Box::new(self.batch_seconds.clone()))?;
        registry.register(Box::new(self.inbox_depth.clone()))?;
        registry.register(Box::new(self.recovery_seconds.clone()))?;
        registry.register(Box::new(self.snapshots.clone()))?;
        registry.register(Box::new(self.snapshot_seconds.clone()))?;
        registry.register(Box::new(self.snapshot_capture_seconds.clone()))?;
        registry.register(Box::new(self.transfer_blocks_memory.clone()))?;
        registry.register(Box::new(self.transfer_blocks_cold.clone()))?;
        registry.register(Box::new(self.journal_files.clone()))?;
        registry.register(Box::new(self.journal_files_bytes.clone()))?;
        registry.register(Box::new(self.journal_files_deleted.clone()))?;
        registry.register(Box::new(self.journal_delete_errors.clone()))?;
        registry.register(Box::new(self.journal_files_preallocated.clone()))?;
        registry.register(Box::new(self.journal_spare_errors.clone()))?;
        registry.register(Box::new(self.journal_writes_polled.clone()))?;
        Ok(())
    }

    /// Counts one request's outcomes (the shard's own legs and settles included).
    pub fn record(&self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            match outcome {
                Outcome::Transfers(results) => {
                    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                    self.transfers_ok.inc_by(ok);
                    self.transfers_rejected.inc_by(results.len() as u64 - ok);
                }
                Outcome::Accounts(results) => {
                    self.accounts_created.inc_by(results.iter().filter(|r| r.is_ok()).count() as u64);
                }
                Outcome::Ticked { .. } => {}
            }
        }
    }
}

/// The rebalancer's metrics ([`crate::rebalance`]).
#[derive(Debug)]
pub struct RebalanceMetrics {
    /// Moves between parts applied.
    pub moves: IntCounter,
    /// Moves refused (a part changed between the reading and the move).
    pub refused: IntCounter,
    /// Sharded accounts with a limit watched in the last round.
    pub accounts: IntGauge,
}

impl RebalanceMetrics {
    /// Unregistered metrics.
    pub fn new() -> Self {
        Self {
            moves: IntCounter::new("molly_rebalance_moves_total", "Moves between parts of sharded accounts.")
                .expect("valid counter"),
            refused: IntCounter::new(
                "molly_rebalance_refused_total",
                "Moves between parts refused (the part changed meanwhile; planned again).",
            )
            .expect("valid counter"),
            accounts: IntGauge::new(
                "molly_rebalance_accounts",
                "Sharded accounts with a balance limit the rebalancer watches.",
            )
            .expect("valid gauge"),
        }
    }

    /// Counts one round.
    pub fn record(&self, round: &crate::rebalance::Round) {
        self.moves.inc_by(round.moved as u64);
        self.refused.inc_by(round.refused as u64);
        self.accounts.set(round.accounts as i64);
    }

    /// Registers every metric with `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.moves.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        registry.register(Box::new(self.accounts.clone()))?;
        Ok(())
    }
}

impl Default for RebalanceMetrics {
    fn default() -> Self {
        Self::new()
    }
}
