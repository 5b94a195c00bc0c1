//! Small files written whole or not at all: the status file (`<data_dir>/status.json`) and the
//! outbox's high-water mark (`<data_dir>/queue/committed.json`).
//!
//! The bytes go to a fresh temporary file in the same directory (`tempfile`, mode 0600 on Unix),
//! which is `fsync`ed and renamed over the target, so a reader sees the old or the new file,
//! never a torn one, and a crash leaves at most a stray temporary file (named `.tmp…`). The
//! temporary name is fresh and the file is created exclusively (`O_CREAT | O_EXCL`, which never
//! follows a symlink), so a symlink planted where a temporary file would go redirects nothing;
//! `rename` replaces a symlink at the target itself, never the file it points to.
//!
//! Also here: [`create_new_private`] (a file made once, never replaced: the path key) and
//! [`create_private_dir`] (the data dir, 0700).

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically (see the module doc).
///
/// # Errors
/// IO errors creating, writing, syncing or renaming the temporary file (it is removed then).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates `path` with `bytes`, mode 0600, only if it does not exist yet (`O_EXCL`, so never
/// through a symlink), and syncs it.
///
/// # Errors
/// [`std::io::ErrorKind::AlreadyExists`] when it exists; other IO errors.
pub fn create_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates `dir` and its missing parents; the directories created get mode 0700 (an existing
/// one keeps its mode).
///
/// # Errors
/// IO errors.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write(&path, b"{\"a\":1}").unwrap();
        write(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A missing directory is an error, not a panic.
        assert!(write(&dir.path().join("no/such/f.json"), b"x").is_err());
    }

    /// A symlink planted where a temporary file or the target would be redirects nothing: the
    /// files it points to keep their bytes, and the target ends up a regular file.
    #[cfg(unix)]
    #[test]
    fn planted_symlinks_redirect_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("status.json");
        for name in ["status.json.tmp", ".tmp", "status.json.new"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        write(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // The target itself a symlink: replaced, not written through.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write(&path, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}");
        // create_new_private refuses to follow one.
        let key = dir.path().join("path.key");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        assert!(create_new_private(&key, b"x").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
