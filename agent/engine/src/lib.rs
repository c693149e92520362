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
mod direct;
pub mod disk;
pub mod dpa;
pub mod filescache;
pub mod forget;
pub mod fsmeta;
pub mod identity;
pub mod job;
pub mod location;
pub mod podvolume;
mod pool;
pub mod progress;
pub mod prune;
pub mod reach;
pub mod repair;
pub mod report;
pub mod restore;
pub mod safefs;
pub mod select;

pub use job::{Cancelled, Job};

/// Raise the soft limit on open descriptors to the hard limit (a process-wide setting: a front
/// end calls it once at start). The backup scan holds a descriptor per directory level entered
/// (up to 256) and a restore one per directory open; at the usual soft limit of 1024 a few
/// jobs at once in one agent over deeply nested volumes would run out, and the scan would fall
/// back to absolute paths, which a workload racing the backup can redirect. Returns the limit
/// in force.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::debug!("raising the open files limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

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
