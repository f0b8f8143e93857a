//! A data-plane worker's scheduling slice (Linux 6.12 and later, EEVDF).
//!
//! A worker asks for a short slice (`sched_setattr` with `sched_runtime` under
//! `SCHED_OTHER`). The scheduler then gives it an earlier deadline than the threads it shares
//! a core with. A worker that was waiting and has an answer to pass on runs soon instead of
//! queueing behind a load generator's or a model server's full slice, and a
//! [`yield_before_sleep`](crate::config::Settings::yield_before_sleep) pushes its deadline back
//! by this short slice rather than by the default one. Older kernels accept the call and
//! ignore the slice. Measured in benches/README.md, issue 15, sixteenth pass.
// The one system call libc does not wrap is unsafe to call; this module is the crate's only
// unsafe code outside the binary's allocator.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

/// The kernel's bounds for a requested slice.
pub const MIN_SLICE: Duration = Duration::from_micros(100);
pub const MAX_SLICE: Duration = Duration::from_millis(100);

/// `struct sched_attr`, first version (48 bytes), as `sched_setattr(2)` documents it.
#[cfg(target_os = "linux")]
#[repr(C)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

/// Asks the kernel to schedule the calling thread with `slice` as its time slice, keeping its
/// `SCHED_OTHER` policy and its nice value.
#[cfg(target_os = "linux")]
pub fn request_slice(slice: Duration) -> io::Result<()> {
    let slice = slice.clamp(MIN_SLICE, MAX_SLICE);
    // SAFETY: getpriority reads the calling thread's nice value (on Linux per thread) and
    // has no memory effects.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice.as_nanos() as u64,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid, initialised sched_attr whose `size` field is its size; the
    // kernel only reads it during the call. Thread 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0 as libc::pid_t,
            &attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn request_slice(_slice: Duration) -> io::Result<()> {
    Ok(())
}

/// What became of a slice request, judged from the slice the kernel reports afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceOutcome {
    /// The thread runs with the slice asked for (clamped to the kernel's bounds).
    Granted,
    /// The kernel accepted the call but kept this slice: Linux before 6.12.
    Ignored(Duration),
    /// The kernel does not report slices (before 6.6, or no `/proc`).
    Unknown,
}

/// Compares the slice asked for with the one `/proc` reports after the request.
pub fn outcome(requested: Duration, reported: Option<Duration>) -> SliceOutcome {
    match reported {
        None => SliceOutcome::Unknown,
        Some(r) if r == requested.clamp(MIN_SLICE, MAX_SLICE) => SliceOutcome::Granted,
        Some(r) => SliceOutcome::Ignored(r),
    }
}

/// The calling thread's slice as the kernel reports it (`se.slice` in
/// `/proc/thread-self/sched`), where it does (Linux 6.6 and later).
pub fn current_slice() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
    let line = text.lines().find(|l| l.starts_with("se.slice"))?;
    let ns: u64 = line.rsplit(':').next()?.trim().parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_judged_by_the_slice_reported_after_it() {
        let asked = Duration::from_micros(100);
        assert_eq!(outcome(asked, Some(asked)), SliceOutcome::Granted);
        // Below the kernel's minimum the request is clamped, and the clamped slice counts.
        assert_eq!(
            outcome(Duration::from_micros(20), Some(MIN_SLICE)),
            SliceOutcome::Granted
        );
        let default = Duration::from_micros(1400);
        assert_eq!(
            outcome(asked, Some(default)),
            SliceOutcome::Ignored(default)
        );
        assert_eq!(outcome(asked, None), SliceOutcome::Unknown);
    }

    /// On a kernel that takes a slice request (6.12 and later) the thread's slice is the one
    /// asked for; older kernels report a slice that does not move, and are skipped.
    #[test]
    fn a_thread_gets_the_slice_it_asks_for() {
        std::thread::spawn(|| {
            let Some(before) = current_slice() else {
                eprintln!("no se.slice in /proc/thread-self/sched: skipped");
                return;
            };
            request_slice(Duration::from_micros(250)).unwrap();
            let after = current_slice().unwrap();
            if after == before && before != Duration::from_micros(250) {
                let release = std::fs::read_to_string("/proc/sys/kernel/osrelease");
                eprintln!("slice unchanged at {before:?} ({release:?}): skipped");
                return;
            }
            assert_eq!(after, Duration::from_micros(250));
            // Out-of-range requests are clamped to what the kernel accepts.
            request_slice(Duration::from_micros(1)).unwrap();
            assert_eq!(current_slice(), Some(MIN_SLICE));
        })
        .join()
        .unwrap();
    }
}
