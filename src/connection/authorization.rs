//! What a reconnect stores: the new authorization of one side, sealed in the store.
//!
//! An admin who reconnects gives only what changed — a new client secret, another JWT username
//! (which switches the authorizing user), a new refresh token — and the rest comes from the
//! configuration as before. The body of `POST /api/v1/connections/{side}/reconnect` is exactly
//! these types (unknown fields refused, so a typo is named rather than ignored). Their `Debug`
//! shows which fields are set and a fingerprint of each secret, never a secret.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Side;
use super::vault::{SECRET_KEY_VAR, SecretKey, Vault, VaultError};
use crate::config::SalesforceAuthFlow;
use crate::store::{Store, StoreError};

/// A short, stable name for a secret: the first 6 bytes of its SHA-256, as hex.
pub fn fingerprint(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..6])
}

fn shown(secret: &Option<String>) -> Option<String> {
    secret.as_deref().map(fingerprint)
}

/// A new Salesforce authorization; fields left out keep their configured values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceAuthorization {
    pub flow: SalesforceAuthFlow,
    #[serde(default)]
    pub consumer_key: Option<String>,
    #[serde(default)]
    pub consumer_secret: Option<String>,
    /// JWT bearer: the authorizing user.
    #[serde(default)]
    pub username: Option<String>,
    /// JWT bearer: the private key, PEM (instead of `salesforce.private_key_file`).
    #[serde(default)]
    pub private_key_pem: Option<String>,
    /// Refresh-token flow.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for SalesforceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceAuthorization")
            .field("flow", &self.flow)
            .field("consumer_key", &self.consumer_key)
            .field("consumer_secret", &shown(&self.consumer_secret))
            .field("username", &self.username)
            .field("private_key_pem", &shown(&self.private_key_pem))
            .field("refresh_token", &shown(&self.refresh_token))
            .finish()
    }
}

/// A new Outreach authorization: a refresh token (from the authorization-code flow, or given on
/// the CLI).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutreachAuthorization {
    pub refresh_token: String,
}

impl fmt::Debug for OutreachAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutreachAuthorization")
            .field("refresh_token", &fingerprint(&self.refresh_token))
            .finish()
    }
}

/// Why a stored authorization could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored {side} authorization does not read back: {problem}")]
    Format { side: Side, problem: String },
}

/// The authorizations reconnects stored: the store holds them sealed, the vault (when a key is
/// configured) seals and opens them.
#[derive(Clone)]
pub struct StoredAuthorizations {
    store: Arc<dyn Store>,
    vault: Option<Vault>,
}

impl StoredAuthorizations {
    pub fn new(store: Arc<dyn Store>, vault: Option<Vault>) -> StoredAuthorizations {
        StoredAuthorizations { store, vault }
    }

    /// With the key of `USERSYNC_SECRET_KEY` or `secrets.key_file`, if either is set.
    pub fn from_config(
        store: Arc<dyn Store>,
        secrets: &crate::config::SecretsConfig,
    ) -> Result<StoredAuthorizations, VaultError> {
        let key = SecretKey::find(std::env::var(SECRET_KEY_VAR).ok(), &secrets.key_file)?;
        Ok(StoredAuthorizations::new(store, key.map(Vault::new)))
    }

    /// The fingerprint of the key, when there is one.
    pub fn key_fingerprint(&self) -> Option<String> {
        self.vault.as_ref().map(Vault::fingerprint)
    }

    /// Seals and stores `authorization` for `side`; refused without a key.
    pub async fn save<T: Serialize>(
        &self,
        side: Side,
        authorization: &T,
    ) -> Result<(), AuthorizationError> {
        let vault = self.vault.as_ref().ok_or(VaultError::NoKey)?;
        let plain = serde_json::to_vec(authorization).expect("authorizations serialize");
        let sealed = vault.seal(side, &plain);
        self.store
            .save_authorization(side.as_str(), &sealed, &vault.fingerprint())
            .await?;
        Ok(())
    }

    /// The side's stored authorization, if a reconnect stored one. One stored without a key
    /// configured now cannot be opened: that is an error, not "none" — signing in with the old
    /// configured credentials instead would undo the admin's reconnect without a word.
    pub async fn load<T: DeserializeOwned>(
        &self,
        side: Side,
    ) -> Result<Option<T>, AuthorizationError> {
        let Some(sealed) = self.store.authorization(side.as_str()).await? else {
            return Ok(None);
        };
        let vault = self.vault.as_ref().ok_or(VaultError::NoKey)?;
        let plain = vault.open(side, &sealed)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| AuthorizationError::Format {
                side,
                problem: e.to_string(),
            })
    }
}

/// Keeps Outreach's newest tokens in the vault: Outreach mints a new refresh token on every
/// refresh, and the one a reconnect stored must not be the one a restart falls back to.
#[async_trait::async_trait]
impl crate::outreach::auth::TokenStore for StoredAuthorizations {
    async fn save(
        &self,
        tokens: &crate::outreach::auth::OAuthTokens,
    ) -> Result<(), crate::outreach::auth::TokenStoreError> {
        let authorization = OutreachAuthorization {
            refresh_token: tokens.refresh_token.clone(),
        };
        StoredAuthorizations::save(self, Side::Outreach, &authorization)
            .await
            .map_err(|e| crate::outreach::auth::TokenStoreError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stored_authorization_reads_back_only_with_the_key() {
        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let key =
            SecretKey::from_base64("q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=", "test").unwrap();
        let stored = StoredAuthorizations::new(store.clone(), Some(Vault::new(key)));
        let new = SalesforceAuthorization {
            flow: SalesforceAuthFlow::ClientCredentials,
            consumer_key: None,
            consumer_secret: Some("s3cr3t-rotated".into()),
            username: None,
            private_key_pem: None,
            refresh_token: None,
        };
        stored.save(Side::Salesforce, &new).await.unwrap();
        let back: Option<SalesforceAuthorization> = stored.load(Side::Salesforce).await.unwrap();
        assert_eq!(back, Some(new.clone()));
        let none: Option<OutreachAuthorization> = stored.load(Side::Outreach).await.unwrap();
        assert!(none.is_none());

        let raw = store.authorization("salesforce").await.unwrap().unwrap();
        assert!(!raw.windows(6).any(|w| w == b"s3cr3t"), "sealed at rest");

        let keyless = StoredAuthorizations::new(store, None);
        let refused = keyless
            .load::<SalesforceAuthorization>(Side::Salesforce)
            .await
            .unwrap_err();
        assert!(matches!(
            refused,
            AuthorizationError::Vault(VaultError::NoKey)
        ));
        assert!(matches!(
            keyless.save(Side::Salesforce, &new).await,
            Err(AuthorizationError::Vault(VaultError::NoKey))
        ));
    }

    #[test]
    fn debug_shows_fingerprints_not_secrets() {
        let shown = format!(
            "{:?} {:?}",
            SalesforceAuthorization {
                flow: SalesforceAuthFlow::JwtBearer,
                consumer_key: Some("key".into()),
                consumer_secret: Some("hunter2".into()),
                username: Some("ann@acme.example".into()),
                private_key_pem: Some("-----BEGIN PRIVATE KEY-----".into()),
                refresh_token: None,
            },
            OutreachAuthorization {
                refresh_token: "rt-123456".into()
            }
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("BEGIN") && !shown.contains("rt-123456")
        );
        assert!(shown.contains(&fingerprint("hunter2")) && shown.contains("ann@acme.example"));
    }
}
