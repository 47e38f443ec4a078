//! glommio vs monoio on Molly's shard workload, to choose the shard runtime
//! (figures and the choice are in docs/shards.md):
//!
//! 1. journal group commit: sequential O_DIRECT writes of one group (64 KiB
//!    and 1 MiB) at increasing offsets, each followed by fdatasync, on one
//!    executor pinned to CPU 0: groups/s, MB/s, latency percentiles;
//! 2. cross-core messages: two executors pinned to CPUs 0 and 1 bounce a
//!    message through a pair of bounded lock-free rings (crossbeam
//!    `ArrayQueue`, polled by each executor): round trips/s. For glommio also
//!    through its own `shared_channel`.
//!
//! `cargo run --release -p molly-bench --example io_runtimes -- [DIR]`
//! (DIR defaults to ./data/io-runtimes; it must be on the disk the journal uses).

use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

const ROUND_TRIPS: u64 = 200_000;

/// Yields to the executor once (both runtimes poll it again at once).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A 4 KiB-aligned buffer for O_DIRECT, usable as a monoio `IoBuf`.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: len > 0 (checked by the callers' sizes) and the layout is valid.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, len }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, std::alloc::Layout::from_size_align(self.len, 4096).unwrap()) }
    }
}

// SAFETY: the pointer is owned and valid for `len` initialised bytes for the
// buffer's whole life; it does not move when `Aligned` moves.
unsafe impl monoio::buf::IoBuf for Aligned {
    fn read_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

struct JournalFigures {
    groups_per_second: f64,
    megabytes_per_second: f64,
    p50_us: u64,
    p99_us: u64,
}

fn summarise(
    histogram: &Histogram<u64>,
    groups: u64,
    group_bytes: usize,
    elapsed: Duration,
) -> JournalFigures {
    JournalFigures {
        groups_per_second: groups as f64 / elapsed.as_secs_f64(),
        megabytes_per_second: (groups as f64 * group_bytes as f64) / elapsed.as_secs_f64() / 1e6,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
    }
}

fn groups_for(group_bytes: usize) -> u64 {
    if group_bytes <= 64 << 10 {
        3000
    } else {
        600
    }
}

fn glommio_journal(path: PathBuf, group_bytes: usize) -> JournalFigures {
    use glommio::{LocalExecutorBuilder, Placement};
    LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let _ = std::fs::remove_file(&path);
            let file = glommio::io::DmaFile::create(&path).await.expect("create");
            let groups = groups_for(group_bytes);
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let started = Instant::now();
            for i in 0..groups {
                let mut buffer = file.alloc_dma_buffer(group_bytes);
                buffer.as_bytes_mut().fill(i as u8 | 1);
                let t = Instant::now();
                let written = file.write_at(buffer, i * group_bytes as u64).await.expect("write");
                assert_eq!(written, group_bytes);
                file.fdatasync().await.expect("fdatasync");
                histogram.record(t.elapsed().as_micros() as u64).unwrap();
            }
            let figures = summarise(&histogram, groups, group_bytes, started.elapsed());
            file.close().await.expect("close");
            figures
        })
        .expect("spawn glommio executor")
        .join()
        .expect("join")
}

fn pin(cpu: usize) {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(id) = ids.into_iter().find(|c| c.id == cpu) {
        assert!(core_affinity::set_for_current(id), "pinning to cpu {cpu}");
    }
}

/// `sqpoll`: a kernel thread polls the submission queue (idle timeout in
/// ms), so submitting needs no system call; it costs a kernel thread that
/// spins while there is work.
fn monoio_journal(path: PathBuf, group_bytes: usize, sqpoll: Option<u32>) -> JournalFigures {
    std::thread::spawn(move || {
        pin(0);
        let mut uring = io_uring::IoUring::builder();
        if let Some(idle_ms) = sqpoll {
            uring.setup_sqpoll(idle_ms);
        }
        let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(256)
            .uring_builder(uring)
            .build()
            .expect("monoio io_uring runtime");
        runtime.block_on(async move {
            let _ = std::fs::remove_file(&path);
            let file = monoio::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .await
                .expect("open");
            let groups = groups_for(group_bytes);
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let started = Instant::now();
            for i in 0..groups {
                let buffer = Aligned::new(group_bytes);
                // SAFETY: the buffer is exclusively owned here.
                unsafe { std::ptr::write_bytes(buffer.ptr, i as u8 | 1, group_bytes) };
                let t = Instant::now();
                let (result, _) = file.write_all_at(buffer, i * group_bytes as u64).await;
                result.expect("write");
                file.sync_data().await.expect("fdatasync");
                histogram.record(t.elapsed().as_micros() as u64).unwrap();
            }
            summarise(&histogram, groups, group_bytes, started.elapsed())
        })
    })
    .join()
    .expect("monoio thread")
}

/// Ping-pong between two pinned executors over two bounded rings.
fn ring_ping_pong<F>(spawn_on: F) -> f64
where
    F: Fn(
        usize,
        Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>,
    ) -> std::thread::JoinHandle<()>,
{
    let ping = Arc::new(ArrayQueue::<u64>::new(128));
    let pong = Arc::new(ArrayQueue::<u64>::new(128));
    let (ping_b, pong_b) = (ping.clone(), pong.clone());
    let started = Instant::now();
    let echo = spawn_on(
        1,
        Box::new(move || {
            Box::pin(async move {
                let mut seen = 0;
                while seen < ROUND_TRIPS {
                    match ping_b.pop() {
                        Some(v) => {
                            while pong_b.push(v).is_err() {
                                YieldNow(false).await;
                            }
                            seen += 1;
                        }
                        None => YieldNow(false).await,
                    }
                }
            })
        }),
    );
    let client = spawn_on(
        0,
        Box::new(move || {
            Box::pin(async move {
                for i in 0..ROUND_TRIPS {
                    while ping.push(i).is_err() {
                        YieldNow(false).await;
                    }
                    loop {
                        if let Some(v) = pong.pop() {
                            assert_eq!(v, i);
                            break;
                        }
                        YieldNow(false).await;
                    }
                }
            })
        }),
    );
    client.join().unwrap();
    echo.join().unwrap();
    ROUND_TRIPS as f64 / started.elapsed().as_secs_f64()
}

fn glommio_spawn(
    cpu: usize,
    task: Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .spawn(task)
            .expect("glommio executor")
            .join()
            .expect("join");
    })
}

fn monoio_spawn(
    cpu: usize,
    task: Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        pin(cpu);
        let mut runtime =
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build().expect("monoio io_uring runtime");
        runtime.block_on(task());
    })
}

fn glommio_channel_ping_pong() -> f64 {
    use glommio::channels::shared_channel;
    let (ping_tx, ping_rx) = shared_channel::new_bounded::<u64>(128);
    let (pong_tx, pong_rx) = shared_channel::new_bounded::<u64>(128);
    let started = Instant::now();
    let echo = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(1))
        .spawn(move || async move {
            let rx = ping_rx.connect().await;
            let tx = pong_tx.connect().await;
            while let Some(v) = rx.recv().await {
                tx.send(v).await.unwrap();
            }
        })
        .unwrap();
    let client = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .spawn(move || async move {
            let tx = ping_tx.connect().await;
            let rx = pong_rx.connect().await;
            for i in 0..ROUND_TRIPS {
                tx.send(i).await.unwrap();
                assert_eq!(rx.recv().await, Some(i));
            }
        })
        .unwrap();
    client.join().unwrap();
    echo.join().unwrap();
    ROUND_TRIPS as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data/io-runtimes"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| -> PathBuf { Path::new(&dir).join(name) };
    println!("journal group commit (O_DIRECT write + fdatasync, pinned to cpu 0), dir {}", dir.display());
    for group_bytes in [64usize << 10, 1 << 20] {
        for (name, figures) in [
            ("glommio", glommio_journal(file("glommio.journal"), group_bytes)),
            ("monoio", monoio_journal(file("monoio.journal"), group_bytes, None)),
            ("monoio+sqpoll", monoio_journal(file("monoio-sqpoll.journal"), group_bytes, Some(10))),
        ] {
            println!(
                "  {name:<14} {:>5} KiB groups: {:>8.0} groups/s {:>7.1} MB/s  p50 {:>5} us  p99 {:>5} us",
                group_bytes >> 10,
                figures.groups_per_second,
                figures.megabytes_per_second,
                figures.p50_us,
                figures.p99_us
            );
        }
    }
    println!("cross-core ping-pong (cpu 0 <-> cpu 1), {ROUND_TRIPS} round trips");
    println!("  glommio  ArrayQueue rings: {:>10.0} round trips/s", ring_ping_pong(glommio_spawn));
    println!("  monoio   ArrayQueue rings: {:>10.0} round trips/s", ring_ping_pong(monoio_spawn));
    println!("  glommio  shared_channel:   {:>10.0} round trips/s", glommio_channel_ping_pong());
    let _ = std::fs::remove_dir_all(&dir);
}
