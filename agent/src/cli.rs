//! The command line, in restic's habits. Global options come before or after the command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_engine::forget::Count;

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failure, 2 bad usage, 3 partial (some source files unreadable, \
some entries not restored, some snapshots not removed by forget), \
10 no repository, 11 repository newer than this ferry, 12 wrong password, 13 corrupt repository data, \
130 cancelled (SIGINT/SIGTERM: what was uploaded is indexed, no snapshot written).\n\
Password: FERRY_PASSWORD, FERRY_PASSWORD_FILE, --password-file, or a prompt on a terminal.";

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Ferry: deduplicating, encrypted backup data mover", after_help = EXIT_CODES)]
pub struct Cli {
    /// Repository location: a directory, or s3:, azure:, gs: (see the README)
    #[arg(long, short = 'r', env = "FERRY_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Repository from a DataProtectionApplication backup location: FILE[#NAME]
    #[arg(long, env = "FERRY_LOCATION", global = true, conflicts_with = "repo")]
    pub location: Option<String>,
    /// With --location: the backup location's credentials file, in its provider's format
    /// (aws: INI with profiles; azure: Velero's KEY=VALUE file; gcp: service-account JSON).
    /// Default: AWS_SHARED_CREDENTIALS_FILE, AZURE_CREDENTIALS_FILE or GOOGLE_APPLICATION_CREDENTIALS
    #[arg(long, env = "FERRY_CREDENTIALS_FILE", global = true, requires = "location")]
    pub credentials_file: Option<PathBuf>,
    /// Extra CA certificate(s) (PEM) to trust for the object store
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the object store's TLS certificate (insecure)
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
    /// Read the repository password from this file (first line)
    #[arg(long, env = "FERRY_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Machine-readable output: JSON lines on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Cache directory (default $XDG_CACHE_HOME/ferry or ~/.cache/ferry)
    #[arg(long, env = "FERRY_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Do not use a local cache
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// More log output: -v what is done, -vv Ferry's debug lines, -vvv its libraries' too
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository
    Init(InitArgs),
    /// Back up files and directories
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(FilterArgs),
    /// Remove snapshots by a retention policy or by id (their data stays until `ferry prune`)
    #[command(after_help = FORGET_HELP)]
    Forget(ForgetArgs),
    /// List the files of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot
    Restore(RestoreArgs),
    /// Print an internal object (config, snapshot, index, tree)
    Cat(CatArgs),
    /// Manage key files (passwords)
    Key(KeyArgs),
    /// Repair after damage: rebuild the index from the packs, or snapshots without lost files
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Remove data no snapshot references, without locks (marks now, deletes after the grace period)
    Prune(PruneArgs),
    /// Check the repository: structure, and with --read-data every stored byte (exit 13 on damage)
    Check(CheckArgs),
    /// Copy snapshots from another repository (--from-repo) into this one
    Copy(CopyArgs),
    /// Print version, architecture and the code paths in use
    Version,
    /// Measure the primitives and the backup/restore pipeline here (JSON report)
    Bench(BenchArgs),
    /// Run the node agent: Velero's data mover for CSI snapshots (DataUploads and
    /// DataDownloads with spec.datamover: ferry)
    Agent(AgentArgs),
    /// Hold the volumes of a mover pod mounted until SIGTERM (what the agent's mover pods run)
    #[command(hide = true)]
    Hold,
}

/// `ferry agent`. Every setting also comes from the environment (the DaemonSet's ConfigMap).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name (the downward API's spec.nodeName)
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// The Velero namespace (openshift-adp under OADP)
    #[arg(long, env = "VELERO_NAMESPACE", default_value = "velero")]
    pub namespace: String,
    /// The spec.datamover value this agent serves
    #[arg(long, env = "FERRY_DATAMOVER", default_value = "ferry")]
    pub datamover: String,
    /// kubelet's pods directory as mounted in the agent (/var/lib/kubelet/pods on the host;
    /// /var/data/kubelet/pods on IBM Cloud)
    #[arg(long, env = "FERRY_HOST_PODS", default_value = "/host_pods")]
    pub host_pods: PathBuf,
    /// The agent's state (job store, caches): a hostPath that survives restarts
    #[arg(long, env = "FERRY_STATE_DIR", default_value = "/var/lib/ferry")]
    pub state_dir: PathBuf,
    /// Volumes moved at once on this node (Velero's loadConcurrency)
    #[arg(long, env = "FERRY_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Volumes accepted beyond the running ones (Velero's prepareQueueLength)
    #[arg(long, env = "FERRY_PREPARE_QUEUE", default_value_t = 2)]
    pub prepare_queue: u16,
    /// Chunk memory shared by all jobs, in MiB
    #[arg(long, env = "FERRY_MEMORY_MIB", default_value_t = 128)]
    pub memory_mib: u64,
    /// Pack bytes uploading at once, all jobs together, in MiB (a pack is in memory while it
    /// uploads; one job alone uploads at most two)
    #[arg(long, env = "FERRY_UPLOAD_MIB", default_value_t = 96, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_mib: u64,
    /// Worker threads per job (default: the cores)
    #[arg(long, env = "FERRY_THREADS")]
    pub threads: Option<usize>,
    /// Secret (in the Velero namespace) holding the repositories' password
    #[arg(long, env = "FERRY_PASSWORD_SECRET", default_value = "ferry-repo-credentials")]
    pub password_secret: String,
    /// Key of the password in that Secret
    #[arg(long, env = "FERRY_PASSWORD_KEY", default_value = "repository-password")]
    pub password_key: String,
    /// Image of the mover pods (the agent's own)
    #[arg(long, env = "FERRY_MOVER_IMAGE")]
    pub mover_image: String,
    /// Clone backup volumes ReadOnlyMany (drivers such as CephFS then avoid a full copy)
    #[arg(long, env = "FERRY_READ_ONLY_CLONES")]
    pub read_only_clones: bool,
    /// Where /metrics, /healthz and /readyz are served
    #[arg(long, env = "FERRY_METRICS_ADDR", default_value = "0.0.0.0:8085")]
    pub metrics_addr: std::net::SocketAddr,
    /// How often a running job writes status.progress
    #[arg(long, env = "FERRY_PROGRESS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub progress_interval: std::time::Duration,
    /// How long a volume of a VolumeBackup or VolumeRestore may wait for the agent of its node
    /// to take it before any agent fails it (no agent runs there)
    #[arg(long, env = "FERRY_PICKUP_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub pickup_timeout: std::time::Duration,
    /// A kubeconfig file (default: the in-cluster service account)
    #[arg(long, env = "FERRY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also download every pack and verify every blob
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Download and verify a part of the packs: n/m (1/10 … 10/10 cover all once) or p% (random)
    #[arg(long, value_name = "n/m|p%")]
    pub read_data_subset: Option<String>,
    /// Use the local cache (default: a fresh temporary one, so that every index object,
    /// snapshot and tree is read from storage, not from a copy made when it was whole)
    #[arg(long)]
    pub with_cache: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// MiB of generated data (half incompressible, half text)
    #[arg(long, default_value_t = 256)]
    pub mb: usize,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Argon2id memory cost in KiB
    #[arg(long, default_value_t = 32 * 1024)]
    pub kdf_memory: u32,
    /// Argon2id iterations
    #[arg(long, default_value_t = 4)]
    pub kdf_iterations: u32,
    /// zstd level for new data (0 = none)
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// Target pack size in MiB
    #[arg(long, default_value_t = 32)]
    pub pack_size_mib: u32,
    /// Average content-defined chunk size in KiB (min = avg/4, max = avg*4)
    #[arg(long, default_value_t = 1024)]
    pub chunk_avg_kib: u32,
    /// Fixed chunk size for disks and block devices in KiB
    #[arg(long, default_value_t = 256)]
    pub disk_chunk_kib: u32,
    /// Garbage collection's grace period: longer than any backup into this repository runs
    /// (prune deletes what it marked only this long after; a longer backup re-checks itself)
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub gc_grace: std::time::Duration,
    /// Take the id key and the chunk sizes of this repository (a location as --repo takes), so
    /// that `ferry copy` between the two keeps blob ids and deduplicates
    #[arg(long, value_name = "LOCATION", conflicts_with_all = ["chunk_avg_kib", "disk_chunk_kib"])]
    pub copy_chunker_params_from: Option<String>,
    #[command(flatten)]
    pub from: FromPasswordArgs,
}

#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the packs' own headers (a lost or damaged index object, lost packs)
    Index {
        /// Say what would be indexed; write nothing
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Write new snapshots without the files and directories whose data is gone
    Snapshots {
        /// Remove each damaged original once its repaired copy is written
        #[arg(long)]
        forget: bool,
        /// Say what would be dropped; write nothing
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Snapshots to repair (ids or unique prefixes; default: all)
        snapshots: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Say what would be marked and deleted; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Unused space allowed to stay in partly used packs: a percentage of the used bytes
    /// (5%), a size (100M, 2G) or `unlimited`
    #[arg(long, default_value = "5%")]
    pub max_unused: String,
    /// Repack at most this many bytes in one run (100M, 2G)
    #[arg(long)]
    pub max_repack: Option<String>,
    /// No backup is running into this repository: delete at once instead of after the grace
    /// period (a backup running meanwhile could lose data: only with nothing else writing)
    #[arg(long)]
    pub sweep_now: bool,
}

/// The password of the other repository (`init --copy-chunker-params-from`, `copy --from-repo`).
#[derive(Debug, Args, Clone, Default)]
pub struct FromPasswordArgs {
    /// Read the other repository's password from this file (first line); else FERRY_FROM_PASSWORD
    /// or a prompt
    #[arg(long, env = "FERRY_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The repository to copy from (a location as --repo takes; credentials from the same
    /// environment); the destination is --repo
    #[arg(long, env = "FERRY_FROM_REPOSITORY", value_name = "LOCATION")]
    pub from_repo: String,
    #[command(flatten)]
    pub from: FromPasswordArgs,
    /// Snapshots to copy: ids (or unique prefixes) or `latest`; default: every snapshot that
    /// matches the filters
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots with this tag (key=value); repeat to require several
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots of this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots that include this path
    #[arg(long = "path")]
    pub paths: Vec<String>,
}

impl FilterArgs {
    /// The engine's filter.
    pub fn filter(&self) -> ferry_engine::select::Filter {
        ferry_engine::select::Filter { host: self.host.clone(), tags: self.tags.clone(), paths: self.paths.clone() }
    }
}

const FORGET_HELP: &str = "Snapshots are grouped (--group-by) and the policy applies to each group on its own; \
a snapshot is kept when any --keep option keeps it, as in restic. Hours, days, ISO weeks (Monday to Sunday), \
months and years are calendar periods in UTC. Durations are humantime's: 2d, 12h, 1w, 90min, 6months, 1y \
(a month is 30.44 days, a year 365.25 days); a bare `m` (restic's month) is refused as ambiguous. \
Only the snapshot objects are removed: the data they referenced stays in the repository until garbage \
collection (prune), which is not available yet.";

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Remove exactly these snapshots (ids, unique prefixes of at least 4 hex digits, or
    /// `latest`) instead of applying a policy
    #[arg(value_name = "SNAPSHOT", conflicts_with_all = [
        "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within",
        "keep_within_hourly", "keep_within_daily", "keep_within_weekly", "keep_within_monthly",
        "keep_within_yearly", "keep_tags",
    ])]
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots (-1 or `unlimited`: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_count)]
    pub keep_last: Option<Count>,
    /// Keep the newest snapshot of each of the last N hours that have one (-1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_count)]
    pub keep_hourly: Option<Count>,
    /// Keep the newest snapshot of each of the last N days that have one (-1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_count)]
    pub keep_daily: Option<Count>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one (-1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_count)]
    pub keep_weekly: Option<Count>,
    /// Keep the newest snapshot of each of the last N months that have one (-1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_count)]
    pub keep_monthly: Option<Count>,
    /// Keep the newest snapshot of each of the last N years that have one (-1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_count)]
    pub keep_yearly: Option<Count>,
    /// Keep every snapshot newer than DURATION before the group's newest snapshot (not before
    /// now), e.g. 2d, 12h, 1y
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within: Option<Duration>,
    /// Keep the newest snapshot of each hour within DURATION of the group's newest
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within_hourly: Option<Duration>,
    /// Keep the newest snapshot of each day within DURATION of the group's newest
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within_daily: Option<Duration>,
    /// Keep the newest snapshot of each ISO week within DURATION of the group's newest
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within_weekly: Option<Duration>,
    /// Keep the newest snapshot of each month within DURATION of the group's newest
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within_monthly: Option<Duration>,
    /// Keep the newest snapshot of each year within DURATION of the group's newest
    #[arg(long, value_name = "DURATION", value_parser = parse_within)]
    pub keep_within_yearly: Option<Duration>,
    /// Keep snapshots with this tag (key=value, or a bare key for any value); repeat to keep
    /// snapshots with any of several tags
    #[arg(long = "keep-tag", value_name = "TAG", value_parser = parse_keep_tag)]
    pub keep_tags: Vec<String>,
    /// Apply the policy to each group of snapshots sharing these: host, paths, tags (all
    /// tags), tag:KEY (one tag's value), comma-separated; '' for one group of all
    #[arg(long, value_name = "LIST", default_value = "host,paths", value_parser = parse_group_by)]
    pub group_by: ferry_engine::forget::GroupBy,
    /// Print what would be removed, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run `ferry prune` afterwards (with its defaults; with --dry-run, a dry prune)
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

impl ForgetArgs {
    /// The engine's policy.
    pub fn policy(&self) -> ferry_engine::forget::Policy {
        ferry_engine::forget::Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
            within_hourly: self.keep_within_hourly,
            within_daily: self.keep_within_daily,
            within_weekly: self.keep_within_weekly,
            within_monthly: self.keep_within_monthly,
            within_yearly: self.keep_within_yearly,
            keep_tags: self.keep_tags.clone(),
        }
    }
}

fn parse_keep_tag(s: &str) -> Result<String, String> {
    ferry_engine::select::parse_tag(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

fn parse_group_by(s: &str) -> Result<ferry_engine::forget::GroupBy, String> {
    ferry_engine::forget::GroupBy::parse(s).map_err(|e| e.to_string())
}

/// A `--keep-*` count: N ≥ 1, or -1 / `unlimited` for all. 0 is refused (restic takes it as
/// "no rule"; leaving the option out says that).
fn parse_count(s: &str) -> Result<Count, String> {
    match s {
        "-1" | "unlimited" => Ok(Count::Unlimited),
        _ => match s.parse::<u32>() {
            Ok(0) => Err("give at least 1 (or -1 / unlimited for all); leave the option out for no rule".into()),
            Ok(n) => Ok(Count::Upto(n)),
            Err(_) => Err(format!("{s:?} is not a count: give a number of at least 1, or -1 / unlimited for all")),
        },
    }
}

/// A `--keep-within*` duration in humantime's syntax, more than zero. A bare `m` is refused:
/// humantime reads it as minutes where restic reads months (`1y6m`), and keeping 6 minutes
/// instead of 6 months would remove snapshots the user meant to keep.
fn parse_within(s: &str) -> Result<Duration, String> {
    let units = s.split(|c: char| !c.is_ascii_alphabetic()).filter(|u| !u.is_empty());
    if units.clone().any(|u| u == "m") {
        return Err(format!("{s:?}: `m` is ambiguous (restic's months, humantime's minutes): write `months` or `min`"));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration (2d, 12h, 1y, 6months): {e}"))?;
    if d.is_zero() {
        return Err("give a duration of more than zero; leave the option out for no rule".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files and directories to back up (a block device or a `*.img`/`*.raw` file alone is
    /// backed up as a disk)
    #[arg(required_unless_present = "pod_volume")]
    pub paths: Vec<PathBuf>,
    /// Back up a pod's volume: PODS_DIR/POD_UID/VOLUME_OR_PV (kubelet layout)
    #[arg(long, conflicts_with = "paths")]
    pub pod_volume: Option<PathBuf>,
    /// Treat the single file given as a disk image (fixed-size chunks)
    #[arg(long)]
    pub disk: bool,
    /// Disk: read only these ranges and take the rest from the parent (CSI GetMetadataDelta
    /// output as JSON, or `OFFSET LENGTH` lines)
    #[arg(long, conflicts_with = "allocated_blocks")]
    pub changed_blocks: Option<PathBuf>,
    /// Disk: only these ranges hold data (CSI GetMetadataAllocated output)
    #[arg(long)]
    pub allocated_blocks: Option<PathBuf>,
    /// Label the snapshot (key=value); repeatable
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's)
    #[arg(long)]
    pub host: Option<String>,
    /// Skip entries whose name or path matches this glob; repeatable
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Parent snapshot (default: the newest with the same identity, else with the same host and
    /// paths)
    #[arg(long, conflicts_with = "force")]
    pub parent: Option<String>,
    /// Re-read every file (ignore the files cache)
    #[arg(long)]
    pub force: bool,
    /// What the sources are a copy of, whatever host or path they are read from: the parent is
    /// the newest snapshot with the same identity (recorded as the `identity` tag)
    #[arg(long, conflicts_with = "pvc")]
    pub identity: Option<String>,
    /// The Kubernetes volume being backed up, as NAMESPACE/PVC: the identity `pvc/NAMESPACE/PVC`
    #[arg(long)]
    pub pvc: Option<String>,
    /// Who asked for this backup (recorded as the `requester` tag)
    #[arg(long)]
    pub requester: Option<String>,
}

impl BackupArgs {
    /// The identity given by --identity or --pvc.
    pub fn identity(&self) -> anyhow::Result<Option<ferry_engine::identity::Identity>> {
        use ferry_engine::identity::Identity;
        match (&self.identity, &self.pvc) {
            (Some(i), _) => Ok(Some(Identity::named(i)?)),
            (None, Some(p)) => {
                let Some((ns, name)) = p.split_once('/') else {
                    anyhow::bail!("--pvc {p:?}: give NAMESPACE/NAME");
                };
                Ok(Some(Identity::pvc(ns, name)?))
            }
            (None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot id (or a unique prefix), or `latest`
    pub snapshot: String,
    /// Only below this path inside the snapshot
    pub path: Option<String>,
    /// Long listing (mode, owner, size, time)
    #[arg(long, short)]
    pub long: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id (or a unique prefix), or `latest`
    pub snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(long, short)]
    pub target: PathBuf,
    /// Restore only paths matching this glob (and their parents); repeatable
    #[arg(long = "include")]
    pub includes: Vec<String>,
    /// Do not restore paths matching this glob; repeatable
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Re-read the restored files and check them against the snapshot
    #[arg(long)]
    pub verify: bool,
    /// Disk snapshots: the target device already reads as zeros (skip zeroing empty ranges)
    #[arg(long)]
    pub assume_zeroed: bool,
    /// Disk snapshots: write to the device even if it is mounted or held (it is opened
    /// exclusively otherwise)
    #[arg(long)]
    pub force: bool,
    /// Create character and block device nodes found in the snapshot (refused by default)
    #[arg(long)]
    pub allow_devices: bool,
    /// Keep setuid and setgid bits on restored files (dropped by default)
    #[arg(long)]
    pub keep_setuid: bool,
    /// Memory the restore plan may take, in MiB (about 350 bytes per file; in use it can reach
    /// twice this)
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub max_plan_memory: u64,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CatKind {
    Config,
    Snapshot,
    Index,
    Tree,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    pub kind: CatKind,
    /// Object id (snapshot: a prefix or `latest`; tree: a tree id or `SNAPSHOT[:PATH]`)
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub cmd: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List key files
    List,
    /// Add a key file (a second password)
    Add(NewPasswordArgs),
    /// Remove a key file
    Remove { id: String },
    /// Change the password of the key in use
    Passwd(NewPasswordArgs),
}

#[derive(Debug, Args)]
pub struct NewPasswordArgs {
    /// Read the new password from this file (else FERRY_NEW_PASSWORD or a prompt)
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
    /// Argon2id memory cost in KiB
    #[arg(long, default_value_t = 32 * 1024)]
    pub kdf_memory: u32,
    /// Argon2id iterations
    #[arg(long, default_value_t = 4)]
    pub kdf_iterations: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_counts() {
        assert_eq!(parse_count("3"), Ok(Count::Upto(3)));
        assert_eq!(parse_count("-1"), Ok(Count::Unlimited));
        assert_eq!(parse_count("unlimited"), Ok(Count::Unlimited));
        for bad in ["0", "-2", "x", "1.5", ""] {
            assert!(parse_count(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keep_durations() {
        assert_eq!(parse_within("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_within("1d12h"), Ok(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_within("90min"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_within("6months"), Ok(Duration::from_secs(6 * 2_630_016)));
        assert_eq!(parse_within("1y"), Ok(Duration::from_secs(31_557_600)));
        // restic's 1y6m means six months; humantime's, six minutes: refused.
        let e = parse_within("1y6m").unwrap_err();
        assert!(e.contains("ambiguous"), "{e}");
        for bad in ["0d", "", "2 fortnights", "-1d"] {
            assert!(parse_within(bad).is_err(), "{bad:?} accepted");
        }
    }
}
