//! Outreach tokens kept in a file across restarts.
//!
//! Outreach rotates the refresh token on every mint, so the one in the configuration is spent
//! after the first start. [`TokenFile`] keeps the newest pair in a file readable by its owner
//! only (mode 0600, written to a temporary file and renamed, so a crash never leaves half a
//! file), read at start before the configured refresh token. The file holds the tokens in
//! plain JSON; the credential vault of the admin side (encrypted at rest) supersedes it.

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
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.error("read", error)),
        };
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
        let stored = Stored {
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
            expires_at: tokens.expires_at,
        };
        let json = serde_json::to_vec(&stored).map_err(|e| TokenStoreError(e.to_string()))?;
        let temporary = temporary_path(&self.path);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&temporary)
            .map_err(|e| self.error("create", e))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|e| self.error("write", e))?;
        std::fs::rename(&temporary, &self.path).map_err(|e| self.error("replace", e))
    }

    fn error(&self, what: &str, error: std::io::Error) -> TokenStoreError {
        TokenStoreError(format!(
            "cannot {what} the token file {}: {error}",
            self.path.display()
        ))
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
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

    #[test]
    fn a_corrupt_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, b"{not json").unwrap();
        let error = TokenFile::new(&path).load().unwrap_err().0;
        assert!(error.contains("tokens.json"), "{error}");
    }
}
