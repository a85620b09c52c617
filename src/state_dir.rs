//! The state directory's permissions: the directory is created 0700 and every file the
//! sidecar creates in it is 0600, whatever the process umask — it holds pushes with
//! citizens' data, the API-7 journal and the replay log.
//!
//! The one place both the replay cache ([`crate::guard::replay`]) and the outbox
//! ([`crate::egress::outbox`]) create files there; `check` uses [`too_open`].

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the state directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) as 0700. An existing directory is left as it is:
/// the operator may have chosen its mode (`check` warns when it is wider).
pub fn create(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    // The umask may have taken bits away; never leave it wider than 0700 either.
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates (or truncates) `path` for writing, 0600.
pub fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Makes sure `path` exists and is 0600: created empty when absent, narrowed when an
/// earlier version left it wider. For files another library opens by path (redb).
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    let mode = f.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        f.set_permissions(Permissions::from_mode(FILE_MODE))?;
        tracing::info!(path = %path.display(), old_mode = format!("{mode:o}"), "state file narrowed to 0600");
    }
    Ok(())
}

/// The mode of `dir` when it exists and others than its owner may enter or read it.
pub fn too_open(dir: &Path) -> Option<u32> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directory_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/state");
        create(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(too_open(&dir), None);
        let f = dir.join("replay.log");
        drop(create_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        let db = dir.join("outbox.redb");
        ensure_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn wider_files_are_narrowed_and_wider_dirs_reported() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o755)).unwrap();
        assert_eq!(too_open(tmp.path()), Some(0o755));
        // An existing directory keeps the operator's mode; `check` reports it.
        create(tmp.path()).unwrap();
        assert_eq!(mode(tmp.path()), 0o755);
        let db = tmp.path().join("outbox.redb");
        std::fs::write(&db, b"keep").unwrap();
        std::fs::set_permissions(&db, Permissions::from_mode(0o644)).unwrap();
        ensure_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(std::fs::read(&db).unwrap(), b"keep");
        assert_eq!(too_open(&tmp.path().join("absent")), None);
    }
}
