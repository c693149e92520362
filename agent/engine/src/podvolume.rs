//! Finding a pod's volume on the node, the way kubelet lays it out:
//! filesystem mode `<pods>/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount` (other plugins:
//! `<pods>/<pod uid>/volumes/<plugin>/<name>`), block mode
//! `<pods>/<pod uid>/volumeDevices/<plugin>/<pv>` (a device node). Exactly one must match.
//! A filesystem volume holding a KubeVirt `disk.img` is a disk.
//!
//! The volume's contents belong to its workload: `disk.img` counts only as a regular file
//! (never through a symlink, which could name any file of the node), and the image is then
//! opened with `O_NOFOLLOW`. The kubelet's own directories (`volumes/…`, `volumeDevices/…`) are
//! trusted, and a block volume must be a block device.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// What a pod volume turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodVolume {
    Filesystem(PathBuf),
    /// A raw disk image on a filesystem volume (KubeVirt).
    Image(PathBuf),
    Block(PathBuf),
}

/// Resolve `PODS_DIR/POD_UID/VOLUME_OR_PV`.
pub fn resolve(spec: &Path) -> Result<PodVolume> {
    let (Some(pod), Some(name)) = (spec.parent(), spec.file_name()) else {
        bail!("pod volume {}: expected PODS_DIR/POD_UID/VOLUME_OR_PV", spec.display());
    };
    if !pod.is_dir() {
        bail!("pod volume {}: no pod directory {}", spec.display(), pod.display());
    }
    let mut found = Vec::new();
    let plugins = |sub: &str| -> Vec<PathBuf> {
        std::fs::read_dir(pod.join(sub)).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    for plugin in plugins("volumes") {
        let base = plugin.join(name);
        let csi = plugin.file_name().is_some_and(|p| p == "kubernetes.io~csi");
        let dir = if csi { base.join("mount") } else { base };
        if dir.is_dir() {
            found.push(PodVolume::Filesystem(dir));
        }
    }
    for plugin in plugins("volumeDevices") {
        let dev = plugin.join(name);
        if let Ok(md) = std::fs::metadata(&dev) {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_block_device() {
                bail!("pod volume: {} is not a block device", dev.display());
            }
            found.push(PodVolume::Block(dev));
        }
    }
    let pattern =
        format!("{0}/volumes/*/{1}[/mount] or {0}/volumeDevices/*/{1}", pod.display(), name.to_string_lossy());
    match found.len() {
        0 => bail!("pod volume: nothing matches {pattern}"),
        1 => {}
        n => bail!("pod volume: {n} volumes match {pattern}: {found:?}"),
    }
    Ok(match found.remove(0) {
        PodVolume::Filesystem(dir) => {
            let img = dir.join("disk.img");
            let entries: Vec<_> =
                std::fs::read_dir(&dir)?.flatten().map(|e| e.file_name()).filter(|n| n != "lost+found").collect();
            match std::fs::symlink_metadata(&img) {
                Ok(m) if m.file_type().is_symlink() && entries.len() == 1 => bail!(
                    "pod volume: {} is a symlink, not a disk image: refused (the volume's workload may have put it there)",
                    img.display()
                ),
                Ok(m) if m.is_file() && entries.len() == 1 => PodVolume::Image(img),
                _ => PodVolume::Filesystem(dir),
            }
        }
        other => other,
    })
}

/// How to back up a pod volume (what a front end knows beyond the volume).
#[derive(Debug, Clone, Default)]
pub struct VolumeBackup {
    pub host: String,
    pub tags: Vec<(String, String)>,
    pub parent: Option<repo_format::SnapshotId>,
    pub cache_dir: Option<PathBuf>,
    pub identity: Option<crate::identity::Identity>,
    pub requester: Option<String>,
}

/// Back up the pod volume `spec` (`PODS_DIR/POD_UID/VOLUME_OR_PV`): a filesystem volume as
/// files, a block volume or a KubeVirt image as a disk. Tags `pod-uid`, `volume` and, for
/// files, `volume-mode=filesystem` are added.
pub async fn backup(
    repo: std::sync::Arc<repo_format::Repository>,
    spec: &Path,
    mut vb: VolumeBackup,
    job: &crate::Job,
) -> Result<crate::backup::Outcome> {
    use crate::disk::backup::{DiskConfig, Mode};
    let vol = resolve(spec)?;
    if let Some(uid) = spec.parent().and_then(|p| p.file_name()) {
        vb.tags.push(("pod-uid".into(), uid.to_string_lossy().into_owned()));
    }
    let volume = spec.file_name().map(|v| v.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
    vb.tags.push(("volume".into(), volume.clone()));
    let (path, no_follow, name) = match vol {
        PodVolume::Filesystem(dir) => {
            vb.tags.push(("volume-mode".into(), "filesystem".into()));
            let cfg = crate::backup::BackupConfig {
                paths: vec![dir],
                excludes: Vec::new(),
                host: vb.host,
                tags: vb.tags,
                parent: vb.parent,
                force: false,
                cache_dir: vb.cache_dir,
                identity: vb.identity,
                requester: vb.requester,
            };
            return crate::backup::run(repo, cfg, job).await;
        }
        PodVolume::Image(img) => (img, true, "disk.img".to_string()),
        PodVolume::Block(dev) => (dev, false, volume),
    };
    let cfg = DiskConfig {
        path,
        name,
        host: vb.host,
        tags: vb.tags,
        parent: vb.parent,
        mode: Mode::Full,
        cache_dir: vb.cache_dir,
        no_follow,
        identity: vb.identity,
        requester: vb.requester,
    };
    crate::disk::backup::run(repo, cfg, job).await
}

/// What a pod volume restore did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VolumeRestore {
    pub target: PathBuf,
    pub bytes_written: u64,
    pub files: u64,
    pub errors: Vec<crate::report::EntryError>,
}

/// Restore snapshot `id` into the pod volume `spec`: a files snapshot into a filesystem volume,
/// a disk snapshot onto a block volume, or as its image file into an empty filesystem volume
/// (a KubeVirt `disk.img`). `filter` selects the files of a files snapshot (a disk is whole).
pub async fn restore(
    repo: std::sync::Arc<repo_format::Repository>,
    id: &repo_format::SnapshotId,
    spec: &Path,
    filter: &crate::restore::Filter,
    job: &crate::Job,
) -> Result<VolumeRestore> {
    use anyhow::Context;
    let repo = crate::restore::load_index(&repo).await?;
    let snap = repo.load_snapshot(id).await.with_context(|| format!("loading snapshot {id}"))?;
    let vol = resolve(spec)?;
    let disk = snap.tag(crate::disk::MODE_TAG) == Some(crate::disk::MODE_BLOCK);
    let target = match (&vol, disk) {
        (PodVolume::Filesystem(dir), false) => {
            let opts = crate::restore::RestoreOptions {
                verify: false,
                allow_devices: false,
                keep_setuid: true,
                max_plan_bytes: crate::restore::RestoreOptions::default().max_plan_bytes,
            };
            let plan = crate::restore::plan(&repo, snap.tree, filter, &opts)
                .await
                .with_context(|| format!("planning the restore of snapshot {id}"))?;
            let out = crate::restore::execute(repo.clone(), plan, dir, job, &opts).await?;
            return Ok(VolumeRestore {
                target: dir.clone(),
                bytes_written: out.bytes_written,
                files: out.files,
                errors: out.errors,
            });
        }
        (PodVolume::Filesystem(dir), true) => dir.join("disk.img"),
        (PodVolume::Image(img), true) => img.clone(),
        (PodVolume::Block(dev), true) => dev.clone(),
        (PodVolume::Image(_) | PodVolume::Block(_), false) => {
            bail!("snapshot {id} holds files; the target volume {} is a disk", spec.display())
        }
    };
    let opts = crate::disk::restore::DiskRestoreOptions {
        assume_zeroed: false,
        force: false,
        verify: false,
        keep_setuid: false,
    };
    let out = crate::disk::restore::run(repo, &snap, &target, opts, job)
        .await
        .with_context(|| format!("restoring disk snapshot {id} to {}", target.display()))?;
    Ok(VolumeRestore { target: out.target, bytes_written: out.bytes_written, files: 1, errors: out.errors })
}

/// Velero's restore-wait mark: an empty file `<volume>/.velero/<restore uid>` (directory mode
/// 0755, file 0644), which `velero-restore-helper` in the pod's `restore-wait` init container
/// polls for. Written without following anything the workload put in the volume (`.velero`
/// may be a symlink planted to make a root process write elsewhere).
pub fn write_restore_mark(volume: &Path, restore_uid: &str) -> Result<()> {
    use std::os::fd::AsFd;
    if restore_uid.is_empty() || !restore_uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("restore uid {restore_uid:?}: not a Kubernetes uid");
    }
    let root = crate::safefs::SafeRoot::open(volume, false)?;
    root.mkdir(Path::new(".velero"))?;
    let dir = root.dir(Path::new(".velero"))?;
    nix::sys::stat::fchmod(dir.as_fd(), nix::sys::stat::Mode::from_bits_truncate(0o755))?;
    let (f, _) = root.create_file(&Path::new(".velero").join(restore_uid), 0)?;
    nix::sys::stat::fchmod(f.as_fd(), nix::sys::stat::Mode::from_bits_truncate(0o644))?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_mark_is_written_in_the_volume_and_never_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let vol = tempfile::tempdir().unwrap();
        write_restore_mark(vol.path(), "0d3c-uid").unwrap();
        let mark = vol.path().join(".velero/0d3c-uid");
        assert_eq!(std::fs::metadata(&mark).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(&mark).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::metadata(vol.path().join(".velero")).unwrap().permissions().mode() & 0o777, 0o755);
        // A hostile workload makes `.velero` a symlink to a directory outside the volume.
        let outside = tempfile::tempdir().unwrap();
        let vol2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), vol2.path().join(".velero")).unwrap();
        write_restore_mark(vol2.path(), "u2").unwrap();
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none(), "wrote outside the volume");
        assert!(vol2.path().join(".velero/u2").is_file());
        assert!(write_restore_mark(vol.path(), "../x").is_err());
    }

    #[test]
    fn finds_csi_mount_image_and_reports_ambiguity() {
        let pods = tempfile::tempdir().unwrap();
        let pod = pods.path().join("uid-1");
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~csi/pv-a/mount")).unwrap();
        std::fs::write(pod.join("volumes/kubernetes.io~csi/pv-a/mount/file"), b"x").unwrap();
        assert_eq!(
            resolve(&pod.join("pv-a")).unwrap(),
            PodVolume::Filesystem(pod.join("volumes/kubernetes.io~csi/pv-a/mount"))
        );
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~csi/pv-vm/mount/lost+found")).unwrap();
        std::fs::write(pod.join("volumes/kubernetes.io~csi/pv-vm/mount/disk.img"), b"").unwrap();
        assert_eq!(
            resolve(&pod.join("pv-vm")).unwrap(),
            PodVolume::Image(pod.join("volumes/kubernetes.io~csi/pv-vm/mount/disk.img"))
        );
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~empty-dir/pv-a")).unwrap();
        assert!(resolve(&pod.join("pv-a")).unwrap_err().to_string().contains("2 volumes match"));
        assert!(resolve(&pod.join("nope")).unwrap_err().to_string().contains("nothing matches"));
        std::fs::create_dir_all(pod.join("volumeDevices/kubernetes.io~csi")).unwrap();
        std::fs::write(pod.join("volumeDevices/kubernetes.io~csi/pv-b"), b"").unwrap();
        assert!(resolve(&pod.join("pv-b")).unwrap_err().to_string().contains("not a block device"));
        std::fs::remove_file(pod.join("volumeDevices/kubernetes.io~csi/pv-b")).unwrap();
        nix::sys::stat::mknod(
            &pod.join("volumeDevices/kubernetes.io~csi/pv-b"),
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(7, 200),
        )
        .unwrap();
        assert_eq!(
            resolve(&pod.join("pv-b")).unwrap(),
            PodVolume::Block(pod.join("volumeDevices/kubernetes.io~csi/pv-b"))
        );
    }

    #[test]
    fn a_disk_img_symlink_planted_by_the_workload_is_refused() {
        let pods = tempfile::tempdir().unwrap();
        let pod = pods.path().join("uid-2");
        let mount = pod.join("volumes/kubernetes.io~csi/pv-vm/mount");
        std::fs::create_dir_all(&mount).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", mount.join("disk.img")).unwrap();
        let e = resolve(&pod.join("pv-vm")).unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
    }
}
