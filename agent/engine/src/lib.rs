//! Ferry's engines, shared by the `ferry` CLI and the node agent.
//!
//! Backup (files, disks, pod volumes), restore, copy between repositories, check, prune and
//! repair, retention (`forget`), snapshot selection and repository opening over the
//! `repo_format` crate. The contract with every front end:
//! - no environment variables are read, nothing is printed and the process is never exited:
//!   settings and credentials arrive as values (`location::CloudOpts`, `open::OpenRequest`);
//! - every long call takes a `job::Job`: a cancellation token, progress counters and limits
//!   (threads, chunks and bytes in flight) that several jobs in one process may share;
//! - results are typed reports (`backup::Outcome`, `restore::Report`) with per-entry errors
//!   (`report::EntryError`: a kind and a path), serializable for a resource's status.
//!
//! There is no process-global mutable state here: the buffer pool, the progress thread and the
//! workers belong to one job.

pub mod attempts;
pub mod backup;
pub mod check;
pub mod copy;
pub mod credentials;
pub mod disk;
pub mod dpa;
pub mod filescache;
pub mod forget;
pub mod fsmeta;
pub mod identity;
pub mod job;
pub mod location;
pub mod podvolume;
pub mod progress;
pub mod prune;
pub mod reach;
pub mod repair;
pub mod report;
pub mod restore;
pub mod safefs;
pub mod select;

pub use job::{Cancelled, Job};

/// Keep glibc from hoarding freed buffers: large blocks (chunks, pack ranges) are always mapped
/// and unmapped instead of the threshold drifting up to 32 MiB, and the number of malloc arenas
/// is capped, so resident memory follows what is in use. A process-wide setting: a front end
/// calls it once at start, before it starts threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Nothing to tune outside glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_malloc() {}
