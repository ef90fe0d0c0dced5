//! Outreach tokens kept in a file across restarts.
//!
//! Outreach rotates the refresh token on every mint, so the one in the configuration is spent
//! after the first start. [`TokenFile`] keeps the newest pair in a file readable by its owner
//! only, read at start before the configured refresh token. The file holds the tokens in plain
//! JSON; the credential vault of the admin side (encrypted at rest) supersedes it.
//!
//! How a save keeps the tokens from anyone else (docs/security.md, "Secrets at rest and in
//! transit"): the new pair goes to a temporary file created exclusively (a fresh random name,
//! never an existing file or a symlink) with mode 0600 in the token file's own folder, is
//! flushed to disk, renamed over the token file, and the folder is flushed too, so a crash
//! leaves the old pair or the new one, never half a file. A symlink at the token file's path is
//! refused rather than followed or replaced, and a token file readable by others (an older
//! release wrote it through a reused temporary file that kept its mode) is tightened to 0600
//! when read.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::{OAuthTokens, TokenStore, TokenStoreError};

/// A token store backed by one file.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    access_token: String,
    refresh_token: String,
    expires_at: Option<DateTime<Utc>>,
}

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile { path: path.into() }
    }

    /// The tokens saved last, or `None` when the file does not exist yet.
    pub fn load(&self) -> Result<Option<OAuthTokens>, TokenStoreError> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(metadata) => {
                self.refuse_symlink(&metadata)?;
                self.tighten()?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.error("read", error)),
        }
        let bytes = std::fs::read(&self.path).map_err(|e| self.error("read", e))?;
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
            TokenStoreError(format!(
                "the token file {} is not a saved token pair: {e}",
                self.path.display()
            ))
        })?;
        Ok(Some(OAuthTokens {
            access_token: stored.access_token,
            refresh_token: stored.refresh_token,
            expires_at: stored.expires_at,
        }))
    }

    fn write(&self, tokens: &OAuthTokens) -> Result<(), TokenStoreError> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(metadata) => self.refuse_symlink(&metadata)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(self.error("inspect", error)),
        }
        let stored = Stored {
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            expires_at: tokens.expires_at,
        };
        let json = serde_json::to_vec(&stored).map_err(|e| TokenStoreError(e.to_string()))?;
        let folder = self.folder();
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        // `tempfile` creates it with O_EXCL and mode 0600 under a random name: an existing file
        // or symlink is never opened, and nobody else can open it between creation and rename.
        let mut temporary = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(folder)
            .map_err(|e| self.error("create a temporary file beside", e))?;
        temporary
            .write_all(&json)
            .and_then(|()| temporary.as_file().sync_all())
            .map_err(|e| self.error("write", e))?;
        temporary
            .persist(&self.path)
            .map_err(|e| self.error("replace", e.error))?;
        std::fs::File::open(folder)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| self.error("flush the folder of", e))?;
        self.remove_legacy_temporary();
        Ok(())
    }

    /// The folder the file is in (`.` for a bare file name).
    fn folder(&self) -> &Path {
        match self.path.parent() {
            Some(parent) if parent != Path::new("") => parent,
            _ => Path::new("."),
        }
    }

    fn refuse_symlink(&self, metadata: &std::fs::Metadata) -> Result<(), TokenStoreError> {
        if metadata.file_type().is_symlink() {
            return Err(TokenStoreError(format!(
                "the token file {} is a symbolic link; usersync keeps its tokens only in a \
                 regular file it owns (point outreach.token_file at the link's target)",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Makes a token file that others may read owner-only, with a warning.
    fn tighten(&self) -> Result<(), TokenStoreError> {
        let was = crate::private_file::tighten(&self.path)
            .map_err(|e| self.error("restrict the permissions of", e))?;
        if let Some(was) = was {
            tracing::warn!(
                path = %self.path.display(),
                was = format!("{was:o}"),
                "the Outreach token file was readable by others; it is now 0600"
            );
        }
        Ok(())
    }

    /// Removes `<file>.tmp`, the fixed temporary name of older releases: it holds an earlier
    /// token pair, perhaps readable by others. A symlink there is removed, never followed.
    fn remove_legacy_temporary(&self) {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let legacy = self.path.with_file_name(name);
        match std::fs::remove_file(&legacy) {
            Ok(()) => tracing::info!(
                path = %legacy.display(),
                "removed the temporary token file an older release left"
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                path = %legacy.display(),
                %error,
                "cannot remove the temporary token file an older release left; remove it by hand"
            ),
        }
    }

    fn error(&self, what: &str, error: std::io::Error) -> TokenStoreError {
        TokenStoreError(format!(
            "cannot {what} the token file {}: {error}",
            self.path.display()
        ))
    }
}

#[async_trait]
impl TokenStore for TokenFile {
    async fn save(&self, tokens: &OAuthTokens) -> Result<(), TokenStoreError> {
        let file = self.clone();
        let tokens = tokens.clone();
        tokio::task::spawn_blocking(move || file.write(&tokens))
            .await
            .map_err(|e| TokenStoreError(format!("saving the token file: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saved_tokens_are_read_back_and_only_the_owner_may_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path().join("outreach-tokens.json"));
        assert_eq!(file.load().unwrap(), None, "nothing saved yet");
        let tokens = OAuthTokens {
            access_token: "access-1".into(),
            refresh_token: "refresh-1".into(),
            expires_at: Some("2026-12-01T12:00:00Z".parse().unwrap()),
        };
        file.save(&tokens).await.unwrap();
        let rotated = OAuthTokens {
            refresh_token: "refresh-2".into(),
            ..tokens
        };
        file.save(&rotated).await.unwrap();
        assert_eq!(file.load().unwrap(), Some(rotated));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("outreach-tokens.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    fn pair(refresh: &str) -> OAuthTokens {
        OAuthTokens {
            access_token: "access".into(),
            refresh_token: refresh.into(),
            expires_at: None,
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_leftover_temporary_file_readable_by_others_is_not_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let leftover = dir.path().join("tokens.json.tmp");
        std::fs::write(&leftover, b"an earlier pair").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();

        TokenFile::new(&path)
            .save(&pair("refresh-1"))
            .await
            .unwrap();
        assert_eq!(mode(&path), 0o600, "the live file is the owner's only");
        assert!(!leftover.exists(), "the old pair does not linger beside it");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["tokens.json"], "no temporary file is left behind");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_in_place_of_the_temporary_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"not yours").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("tokens.json.tmp")).unwrap();

        TokenFile::new(&path)
            .save(&pair("refresh-1"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"not yours");
        assert_eq!(
            TokenFile::new(&path).load().unwrap(),
            Some(pair("refresh-1"))
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_at_the_token_path_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.json");
        let path = dir.path().join("tokens.json");
        let file = TokenFile::new(&target);
        file.save(&pair("refresh-1")).await.unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();

        let linked = TokenFile::new(&path);
        let error = linked.load().unwrap_err().0;
        assert!(
            error.contains("tokens.json") && error.contains("symbolic link"),
            "{error}"
        );
        let error = linked.save(&pair("refresh-2")).await.unwrap_err().0;
        assert!(error.contains("symbolic link"), "{error}");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(file.load().unwrap(), Some(pair("refresh-1")));
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_readable_by_others_is_tightened_when_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(
            &path,
            br#"{"access_token":"a","refresh_token":"r","expires_at":null}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(TokenFile::new(&path).load().unwrap().is_some());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_corrupt_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, b"{not json").unwrap();
        let error = TokenFile::new(&path).load().unwrap_err().0;
        assert!(error.contains("tokens.json"), "{error}");
    }
}
