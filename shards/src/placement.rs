//! Where a shard's background threads run. A shard thread is pinned to one
//! CPU, and a thread it starts inherits that pin: its snapshot writer and
//! its spare journal writer would then compete with their shard for that
//! CPU alone. [`unpin_current_thread`] lets such a thread run on any CPU of
//! the process. (The io_uring worker threads that run a shard's journal
//! writes when the kernel cannot complete them inline inherit the pin as
//! well, and stay pinned: they share the CPU with the shard, which applies
//! the group while its write is in flight, so a worker preempts that apply
//! briefly; `runtime::PROBE_NAME` says why one once waited a whole tick;
//! tuning/README.md, "Parking".)
//!
//! Must not: move a shard thread (it stays pinned).

/// The CPUs thread `tid` may run on (0: the calling thread).
fn affinity(tid: libc::pid_t) -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most its size into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size are the set's.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc == 0 {
        Ok(set)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs the process may use: the main thread's affinity (a shard
/// thread's own mask is its single CPU).
fn process_cpus() -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: getpid has no preconditions.
    affinity(unsafe { libc::getpid() })
}

/// Lets the calling thread run on any CPU of the process.
pub fn unpin_current_thread() -> std::io::Result<()> {
    let set = process_cpus()?;
    // SAFETY: pid 0 = the calling thread; the set is valid.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(set: &libc::cpu_set_t) -> Vec<usize> {
        // SAFETY: CPU_ISSET reads the set.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, set) }).collect()
    }

    fn current() -> libc::cpu_set_t {
        affinity(0).unwrap()
    }

    #[test]
    fn a_thread_started_by_a_pinned_thread_is_unpinned_to_the_process_cpus() {
        let all = mask(&process_cpus().unwrap());
        std::thread::spawn(move || {
            // SAFETY: a zeroed set with the process's first CPU, applied to this thread.
            unsafe {
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(all[0], &mut one);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one), 0);
            }
            // A thread it starts inherits the pin, until it unpins itself.
            let first = all[0];
            std::thread::spawn(move || {
                assert_eq!(mask(&current()), [all[0]], "inherits the pin");
                unpin_current_thread().unwrap();
                assert_eq!(mask(&current()), all, "may run where the process may");
            })
            .join()
            .unwrap();
            assert_eq!(mask(&current()), [first], "the pinned thread stays pinned");
        })
        .join()
        .unwrap();
    }
}
