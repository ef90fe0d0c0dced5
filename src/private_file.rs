//! Files only their owner may read: the SQLite store, the Outreach token file, the vault's key.
//!
//! These files hold personal data or secrets, so usersync creates them with mode 0600 and
//! checks the mode of the ones it finds (docs/security.md, "Secrets at rest and in transit").
//! What to do with a file others may read depends on whose file it is: one usersync wrote
//! itself is tightened (an older release created it with the umask's mode), one an operator
//! provides (the vault key) is refused, as ssh refuses a private key others can read, since
//! changing an operator's file behind their back would hide that it was exposed.
//!
//! On systems without Unix modes these checks pass: there is no mode to read.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

/// The mode bits that let a group or everyone else in.
pub const OTHERS: u32 = 0o077;

/// The permission bits of a file (`0o644`), or `None` where the system has no Unix modes.
pub fn mode(metadata: &Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(metadata.permissions().mode() & 0o777)
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        None
    }
}

/// Creates `path` with mode 0600 unless it exists: `Ok(true)` when it was created here.
/// A symlink at `path` counts as existing and is not followed.
pub fn create_if_missing(path: &Path) -> io::Result<bool> {
    let mut options = File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

/// Makes `path` owner-only (0600) when a group or everyone else may read or write it, and
/// returns the mode it had; `None` when it was private already or does not exist.
pub fn tighten(path: &Path) -> io::Result<Option<u32>> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    match mode(&metadata) {
        Some(was) if was & OTHERS != 0 => {
            set_owner_only(path)?;
            Ok(Some(was))
        }
        _ => Ok(None),
    }
}

#[cfg(unix)]
fn set_owner_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_owner_only(_: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_is_the_owners_only_and_an_existing_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        assert!(create_if_missing(&path).unwrap());
        assert_eq!(mode_of(&path), 0o600);
        std::fs::write(&path, b"kept").unwrap();
        assert!(!create_if_missing(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }

    #[test]
    fn a_file_others_may_read_is_tightened_and_its_old_mode_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        assert_eq!(tighten(&path).unwrap(), None, "nothing there");
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(tighten(&path).unwrap(), Some(0o640));
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(tighten(&path).unwrap(), None, "private already");
    }
}
