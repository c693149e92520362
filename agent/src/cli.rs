//! The command line, in restic's habits. Global options come before or after the command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failure, 2 bad usage, 3 partial (some source files unreadable), \
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
    /// More log output (repeat for more)
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
    /// List the files of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot
    Restore(RestoreArgs),
    /// Print an internal object (config, snapshot, index, tree)
    Cat(CatArgs),
    /// Manage key files (passwords)
    Key(KeyArgs),
    /// Check the repository: structure, and with --read-data every stored byte (exit 13 on damage)
    Check(CheckArgs),
    /// Copy snapshots from another repository (--from-repo) into this one
    Copy(CopyArgs),
    /// Print version, architecture and the code paths in use
    Version,
    /// Measure the primitives and the backup/restore pipeline here (JSON report)
    Bench(BenchArgs),
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
    /// Take the id key and the chunk sizes of this repository (a location as --repo takes), so
    /// that `ferry copy` between the two keeps blob ids and deduplicates
    #[arg(long, value_name = "LOCATION", conflicts_with_all = ["chunk_avg_kib", "disk_chunk_kib"])]
    pub copy_chunker_params_from: Option<String>,
    #[command(flatten)]
    pub from: FromPasswordArgs,
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
