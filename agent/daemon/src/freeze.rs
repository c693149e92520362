//! Freezing a mounted filesystem (FIFREEZE) for as long as a snapshot needs, with a thaw
//! (FITHAW) that is guaranteed:
//!
//! - on success and on every error path: [`Frozen::thaw`], or dropping the guard (also while a
//!   panic unwinds);
//! - on a hang: a watchdog thread per freeze thaws it at the maximum freeze time, whatever the
//!   async runtime is doing;
//! - on SIGTERM: the agent's shutdown calls [`Freezer::thaw_all`];
//! - after a crash or `kill -9`: each freeze is recorded in the job store *before* the ioctl
//!   and the record dropped only *after* the thaw, and [`Freezer::recover`] (the first thing the
//!   agent does at start) thaws whatever is recorded.
//!
//! Refused up front: a path that is not a mount point (its filesystem would be the node's
//! own, e.g. kubelet's root), a filesystem the agent's state directory lives on (the record
//! could not be written while frozen), and a filesystem frozen by someone else (EBUSY). A thaw
//! of a filesystem that is not frozen (EINVAL) counts as done: thawing is idempotent here.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::store::Store;

#[allow(unsafe_code)]
mod ioctl {
    // FIFREEZE and FITHAW: _IOWR('X', 119, int) and _IOWR('X', 120, int) in <linux/fs.h>.
    nix::ioctl_readwrite!(fifreeze, b'X', 119, nix::libc::c_int);
    nix::ioctl_readwrite!(fithaw, b'X', 120, nix::libc::c_int);

    /// FIFREEZE on the filesystem of the open directory `fd`.
    pub fn freeze(fd: std::os::fd::RawFd) -> nix::Result<()> {
        let mut arg: nix::libc::c_int = 0;
        // SAFETY: `fd` is an open descriptor owned by the caller for the whole call, and `arg`
        // is a live int the kernel may read (it ignores it for FIFREEZE).
        unsafe { fifreeze(fd, &mut arg) }.map(drop)
    }

    /// FITHAW on the filesystem of the open directory `fd`.
    pub fn thaw(fd: std::os::fd::RawFd) -> nix::Result<()> {
        let mut arg: nix::libc::c_int = 0;
        // SAFETY: as for `freeze`.
        unsafe { fithaw(fd, &mut arg) }.map(drop)
    }
}

/// Thaw the filesystem of the open directory `dir`. `Ok(false)`: it was not frozen.
fn thaw_fd(dir: &File) -> nix::Result<bool> {
    match ioctl::thaw(dir.as_raw_fd()) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Thaw the filesystem mounted at `path`. `Ok(false)`: it was not frozen.
pub fn thaw_path(path: &Path) -> Result<bool> {
    let dir = File::open(path).with_context(|| format!("opening {} to thaw it", path.display()))?;
    thaw_fd(&dir).with_context(|| format!("thawing {}", path.display()))
}

/// The freezes of one agent: their records, their watchdogs, and the thaw-everything of its
/// shutdown.
#[derive(Debug)]
pub struct Freezer {
    store: Arc<Store>,
    /// Filesystems the agent's own files live on: never frozen.
    own_devices: Vec<u64>,
    /// Mount points frozen (or being frozen: `None`) by this agent. Reserved before the ioctl,
    /// so two freezes of one mount never race (the second is refused before touching anything).
    active: Mutex<HashMap<PathBuf, Option<Arc<Hold>>>>,
    /// Set by the shutdown: no new freeze starts.
    closed: std::sync::atomic::AtomicBool,
}

/// One frozen filesystem, shared by its guard and its watchdog.
#[derive(Debug)]
struct Hold {
    path: PathBuf,
    dir: File,
    since: Instant,
    /// `Some((who, when))` once thawed (by the guard, the watchdog or the shutdown).
    state: Mutex<Option<(&'static str, Instant)>>,
    wake: Condvar,
}

/// How a freeze ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thawed {
    /// How long the filesystem was frozen (until now if the thaw failed).
    pub frozen_for: Duration,
    /// `None` if this guard thawed it; else who did first ("watchdog", "shutdown").
    pub by_other: Option<&'static str>,
    /// The thaw failed (the watchdog keeps trying; the record stays for the next start).
    pub error: Option<String>,
}

/// What a release did.
enum Released {
    Now,
    Already(&'static str),
    Failed(nix::errno::Errno),
}

/// The mount at exactly `path` in `/proc/self/mountinfo`: `Some(root)` (the directory of its
/// filesystem that is mounted there: `/` for a whole filesystem), `None` if nothing is mounted
/// there.
fn mount_root(path: &Path) -> Result<Option<String>> {
    // Mount points are written with octal escapes for space, tab, newline and backslash.
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let want = path.to_string_lossy();
    // The last mount at a path is the visible one.
    Ok(text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && unescape(f[4]) == want).then(|| unescape(f[3]))
    }))
}

impl Freezer {
    /// `own`: paths whose filesystems must never be frozen (the state directory, the root).
    pub fn new(store: Arc<Store>, own: &[&Path]) -> Freezer {
        let own_devices = own.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.dev()).collect();
        Freezer { store, own_devices, active: Mutex::new(HashMap::new()), closed: Default::default() }
    }

    /// Thaw every freeze the job store records (left by a crash or `kill -9` of an earlier run).
    /// A record is dropped once thawed (or found not frozen, or its path gone); one whose thaw
    /// failed is kept for the next start. Returns `(path, what happened)`.
    pub fn recover(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (path, owner) in self.store.freezes()? {
            let (what, done) = match File::open(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ("is gone (its volume was unmounted): nothing left to thaw".to_string(), true)
                }
                Err(e) => (format!("could not be opened to thaw it: {e}"), false),
                Ok(dir) => match thaw_fd(&dir) {
                    Ok(true) => (format!("thawed (frozen for {owner} by an earlier run)"), true),
                    Ok(false) => ("was not frozen".to_string(), true),
                    Err(e) => (format!("could not be thawed ({e}): the record is kept for the next start"), false),
                },
            };
            tracing::warn!(path, owner, "recovered freeze: {what}");
            if done {
                self.store.thawed(&path)?;
            }
            out.push((path, what));
        }
        Ok(out)
    }

    /// Freeze the filesystem mounted at `path` for `owner`, for at most `max` (then the
    /// watchdog thaws it). Blocking: FIFREEZE writes back the filesystem's dirty data first.
    pub fn freeze(self: &Arc<Self>, path: &Path, owner: &str, max: Duration) -> Result<Frozen> {
        let key = path.to_path_buf();
        {
            let mut active = self.active.lock().expect("freezes lock");
            if active.contains_key(&key) {
                bail!(
                    "{} is already frozen by this agent (another backup of the same volume is taking its snapshot)",
                    path.display()
                );
            }
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                bail!("the agent is stopping: {} is not frozen", path.display());
            }
            active.insert(key.clone(), None);
        }
        let r = self.freeze_reserved(path, owner, max);
        if r.is_err() {
            self.active.lock().expect("freezes lock").remove(&key);
        }
        r
    }

    fn freeze_reserved(self: &Arc<Self>, path: &Path, owner: &str, max: Duration) -> Result<Frozen> {
        let dir = File::open(path).with_context(|| format!("opening {} to freeze it", path.display()))?;
        let meta = dir.metadata()?;
        if !meta.is_dir() {
            bail!("{} is not a directory (only a mounted filesystem can be frozen)", path.display());
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        let parent_dev = std::fs::metadata(parent).with_context(|| format!("reading {}", parent.display()))?.dev();
        let root = mount_root(&path.canonicalize().with_context(|| format!("resolving {}", path.display()))?)?;
        if root.is_none() || (parent_dev == meta.dev() && path != Path::new("/")) {
            bail!(
                "{} is not a mount point: freezing it would freeze the filesystem that holds it, not the volume",
                path.display()
            );
        }
        if let Some(r) = root.filter(|r| r != "/") {
            bail!(
                "{} is a subdirectory ({r}) of a filesystem other volumes may share: freezing it would freeze them \
                 too (only a volume that is a whole filesystem is frozen)",
                path.display()
            );
        }
        if self.own_devices.contains(&meta.dev()) {
            bail!("{} is on the filesystem of the agent's own files: it cannot be frozen", path.display());
        }
        let text = path.to_string_lossy().into_owned();
        // The record goes first: a crash at any later moment leaves it for the next start.
        self.store.freezing(&text, owner)?;
        if let Err(e) = ioctl::freeze(dir.as_raw_fd()) {
            // Not frozen by this call: its record goes (no other freeze of this path exists: the
            // path is reserved).
            let _ = self.store.thawed(&text);
            return Err(match e {
                nix::errno::Errno::EBUSY => anyhow::anyhow!(
                    "{} is already frozen by someone else (a pre hook running fsfreeze? use either \
                     ferry.dev/freeze or the hook): not touching it",
                    path.display()
                ),
                nix::errno::Errno::EOPNOTSUPP => {
                    anyhow::anyhow!("the filesystem at {} does not support freezing", path.display())
                }
                e => anyhow::Error::from(e).context(format!("freezing {}", path.display())),
            });
        }
        let hold = Arc::new(Hold {
            path: path.to_path_buf(),
            dir,
            since: Instant::now(),
            state: Mutex::new(None),
            wake: Condvar::new(),
        });
        self.active.lock().expect("freezes lock").insert(path.to_path_buf(), Some(hold.clone()));
        let watchdog = {
            let (hold, me) = (hold.clone(), self.clone());
            std::thread::Builder::new().name("ferry-freeze-watchdog".into()).spawn(move || me.watch(&hold, max))
        };
        if let Err(e) = watchdog {
            // No watchdog, no freeze.
            self.release(&hold, "guard");
            return Err(anyhow::Error::from(e).context("starting the freeze watchdog (thawed at once)"));
        }
        tracing::info!(path = %path.display(), owner, "frozen");
        Ok(Frozen { hold, freezer: self.clone(), done: false })
    }

    /// Thaw `hold` at `max` unless thawed before; if a thaw fails, retry every second.
    fn watch(&self, hold: &Hold, max: Duration) {
        let deadline = hold.since + max;
        let mut state = hold.state.lock().expect("freeze state lock");
        while state.is_none() {
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                tracing::error!(path = %hold.path.display(), "frozen for the maximum of {max:?}: the watchdog thaws it");
                while let Released::Failed(_) = self.release(hold, "watchdog") {
                    std::thread::sleep(Duration::from_secs(1));
                }
                return;
            }
            state = hold.wake.wait_timeout(state, deadline - now).expect("freeze state lock").0;
        }
    }

    /// Thaw `hold` unless already thawed. A failed thaw leaves it frozen as far as everyone is
    /// concerned: still active (the shutdown tries again), the record kept, the watchdog on it.
    fn release(&self, hold: &Hold, who: &'static str) -> Released {
        let mut state = hold.state.lock().expect("freeze state lock");
        if let Some((by, _)) = *state {
            return Released::Already(by);
        }
        let mut tries = 0;
        loop {
            match thaw_fd(&hold.dir) {
                Ok(_) => break,
                Err(e) if tries < 3 => {
                    tracing::error!(path = %hold.path.display(), "thawing: {e}; retrying");
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    tracing::error!(path = %hold.path.display(), "thawing failed: {e}; the watchdog retries, the record is kept");
                    return Released::Failed(e);
                }
            }
        }
        // Thawed: now the state, then the record (a crash in between only thaws twice).
        *state = Some((who, Instant::now()));
        hold.wake.notify_all();
        drop(state);
        self.active.lock().expect("freezes lock").remove(&hold.path);
        if let Err(e) = self.store.thawed(&hold.path.to_string_lossy()) {
            tracing::warn!(path = %hold.path.display(), "dropping the freeze record: {e:#}");
        }
        tracing::info!(path = %hold.path.display(), by = who, "thawed after {:?}", hold.since.elapsed());
        Released::Now
    }

    /// Thaw everything this agent froze, and refuse new freezes (its shutdown). Returns how
    /// many were thawed.
    pub fn thaw_all(&self) -> usize {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let holds: Vec<Arc<Hold>> = self.active.lock().expect("freezes lock").values().flatten().cloned().collect();
        holds.iter().filter(|h| matches!(self.release(h, "shutdown"), Released::Now)).count()
    }

    /// Filesystems frozen (or being frozen) right now.
    pub fn frozen(&self) -> usize {
        self.active.lock().expect("freezes lock").len()
    }
}

/// A frozen filesystem: thawed by [`Frozen::thaw`] or when dropped.
#[derive(Debug)]
pub struct Frozen {
    hold: Arc<Hold>,
    freezer: Arc<Freezer>,
    done: bool,
}

impl Frozen {
    /// Thaw now; says for how long it was frozen, whether someone else (the watchdog) thawed
    /// it first, and whether the thaw failed.
    pub fn thaw(mut self) -> Thawed {
        self.done = true;
        let (by_other, error) = match self.freezer.release(&self.hold, "guard") {
            Released::Now => (None, None),
            Released::Already(by) => (Some(by), None),
            Released::Failed(e) => (None, Some(format!("thawing {} failed: {e}", self.hold.path.display()))),
        };
        let at = self.hold.state.lock().expect("freeze state lock").map_or_else(Instant::now, |(_, at)| at);
        Thawed { frozen_for: at - self.hold.since, by_other, error }
    }

    pub fn path(&self) -> &Path {
        &self.hold.path
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            self.freezer.release(&self.hold, "guard");
        }
    }
}
