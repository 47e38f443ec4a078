//! # molly-bench: Molly's benchmark drivers
//!
//! **Owns**: the workloads and measurements behind `molly bench ...` (and
//! the criterion benches in `benches/`): generating reproducible load
//! (seeded), timing only the system under test, latency histograms
//! (HdrHistogram), human summaries and JSON reports.
//!
//! **Must not**: be depended on by production crates, or put timing
//! assertions into tests: figures are reported, never asserted.
//!
//! ```text
//!   workload (seeded PRNG, uniform or Zipf pairs) ──► batches of 8190
//!        └─(untimed)                                      │
//!   Instant::now ──► engine.create_transfers(batch) ──► Instant::elapsed ──► histogram
//! ```
//!
//! ```
//! use molly_bench::engine::{run_transfers, Pairs, TransferScenario};
//! let report = run_transfers(&TransferScenario {
//!     name: "doc".into(), accounts: 100, transfers: 20_000, batch: 8190, pairs: Pairs::Uniform, seed: 7, prefault: false,
//! }, |_| {}).unwrap();
//! assert_eq!(report.transfers, 20_000);
//! assert_eq!(report.rejected, 0);
//! ```

pub mod engine;
pub mod network;
pub mod report;
pub mod shards;
