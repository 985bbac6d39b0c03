//! The API server's data at rest is private to its user, whatever the umask:
//! the data directory is 0700 and the files holding secrets (the SQLite
//! database and its `-wal`/`-shm`, `tokens.csv`, `admin.kubeconfig`,
//! `pki/*.key`) are 0600. A directory or file found group/world-accessible
//! at start-up (made by an older version, or by hand) is fixed with a warning
//! naming the path and its old mode. Certificates stay world-readable (they
//! are public) inside the private directory.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file holding secrets.
pub const FILE_MODE: u32 = 0o600;

/// A mode change that could not be made, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}: {source}", path.display())]
pub struct PrivateError {
    /// The file or directory.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

fn err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> PrivateError + 'a {
    move |source| PrivateError {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Create `dir` (and missing parents) with the final component 0700; an
/// existing `dir` open to group or others is narrowed to 0700 with a warning.
/// The parents keep their modes: they are not ours.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PrivateError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(err(parent, "cannot create the directory"))?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(err(dir, "cannot create the data directory")(e)),
    }
    // DirBuilder's mode is filtered by the umask (0700 & !022 is still 0700,
    // but a umask like 0o277 would leave it unusable): set it explicitly.
    narrow(dir, DIR_MODE)
}

/// Make an existing file 0600 if it is open to group or others, with a
/// warning; a missing file is fine.
pub fn ensure_private_file(path: &Path) -> Result<(), PrivateError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => narrow(path, FILE_MODE),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(path, "cannot inspect")(e)),
    }
}

/// Create `path` empty with mode 0600 unless it exists (then make sure it is
/// private): SQLite opens an existing file as it is, and gives the `-wal` and
/// `-shm` files the database file's mode.
pub fn create_private_file(path: &Path) -> Result<(), PrivateError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => narrow(path, FILE_MODE),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_private_file(path),
        Err(e) => Err(err(path, "cannot create")(e)),
    }
}

/// If `path`'s mode grants anything outside `mode`, set it to `mode` (and
/// warn when it was group/world-accessible, not merely created under a umask).
fn narrow(path: &Path, mode: u32) -> Result<(), PrivateError> {
    let meta = fs::metadata(path).map_err(err(path, "cannot inspect"))?;
    let old = meta.permissions().mode() & 0o7777;
    if old == mode {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(err(path, "cannot change the mode"))?;
    if old & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            old_mode = format!("{old:04o}"),
            new_mode = format!("{mode:04o}"),
            "data at rest was readable by other users; made private"
        );
    }
    Ok(())
}

/// The files under `dir` that hold secrets, as the server lays them out.
pub fn secret_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "berth-apiserver.db",
        "berth-apiserver.db-wal",
        "berth-apiserver.db-shm",
        "berth-apiserver.db-journal",
        "tokens.csv",
        "admin.kubeconfig",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    if let Ok(entries) = fs::read_dir(dir.join("pki")) {
        files.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "key")),
        );
    }
    files
}

/// Make the data directory 0700 and every secret file in it 0600 (see the module docs).
pub fn secure_data_dir(dir: &Path) -> Result<(), PrivateError> {
    ensure_private_dir(dir)?;
    // pki/ 0700 as kubeadm makes /etc/kubernetes/pki (the certificates in it
    // stay 0644: public, but nobody else needs to list the directory).
    let pki = dir.join("pki");
    if pki.is_dir() {
        ensure_private_dir(&pki)?;
    }
    for file in secret_files(dir) {
        ensure_private_file(&file)?;
    }
    Ok(())
}

/// Warn (once, at start-up) when a file holding key material — the
/// encryption provider configuration — is readable by group or others. It is
/// the operator's file, maybe shared by a config tool: not changed, only flagged.
pub fn warn_if_exposed(path: &Path, what: &str) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "{what} is readable by other users; it holds keys: chmod 600 it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_dir_and_file_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("berth-apiserver.db");
        create_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        // Twice: nothing changes, no error.
        ensure_private_dir(&dir).unwrap();
        create_private_file(&db).unwrap();
        assert_eq!((mode(&dir), mode(&db)), (0o700, 0o600));
    }

    #[test]
    fn open_modes_are_narrowed_and_certificates_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::set_permissions(dir, Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(dir.join("pki")).unwrap();
        for (f, m) in [
            ("berth-apiserver.db", 0o644),
            ("tokens.csv", 0o666),
            ("pki/ca.key", 0o640),
            ("pki/ca.crt", 0o644),
        ] {
            fs::write(dir.join(f), b"x").unwrap();
            fs::set_permissions(dir.join(f), Permissions::from_mode(m)).unwrap();
        }
        fs::set_permissions(dir.join("pki"), Permissions::from_mode(0o755)).unwrap();
        secure_data_dir(dir).unwrap();
        assert_eq!(mode(dir), 0o700);
        assert_eq!(mode(&dir.join("pki")), 0o700);
        assert_eq!(mode(&dir.join("berth-apiserver.db")), 0o600);
        assert_eq!(mode(&dir.join("tokens.csv")), 0o600);
        assert_eq!(mode(&dir.join("pki/ca.key")), 0o600);
        assert_eq!(mode(&dir.join("pki/ca.crt")), 0o644);
    }

    #[test]
    fn a_file_in_place_of_the_dir_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data");
        fs::write(&file, b"").unwrap();
        let e = ensure_private_dir(&file).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
    }
}
