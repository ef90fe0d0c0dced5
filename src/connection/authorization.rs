//! What a reconnect stores: the new authorization of one side, sealed in the store.
//!
//! An admin who reconnects gives only what changed — a new client secret, another JWT username
//! (which switches the authorizing user), a new refresh token — and the rest comes from the
//! configuration as before. The body of `POST /api/v1/connections/{side}/reconnect` is exactly
//! these types (unknown fields refused, so a typo is named rather than ignored). Their `Debug`
//! shows which fields are set and a fingerprint of each secret, never a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Side;
use super::vault::{SECRET_KEY_VAR, SecretKey, Vault, VaultError};
use crate::config::SalesforceAuthFlow;
use crate::store::{Store, StoreError};
use zeroize::Zeroizing;

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
    #[error(
        "the stored {side} authorization is at generation {stored}, but this process already \
         saw generation {seen}: the row was put back from an earlier copy of the database; \
         reconnect to store it again (or restart, if the database was restored on purpose)"
    )]
    RolledBack { side: Side, stored: i64, seen: i64 },
    #[error(
        "the stored {side} authorization kept changing under this save ({SAVE_ATTEMPTS} \
         attempts): other writers are saving it at the same time; try again"
    )]
    Contended { side: Side },
}

/// How often a save reads the generation again when another writer stored one first.
const SAVE_ATTEMPTS: u32 = 8;

/// The authorizations reconnects stored: the store holds them sealed, the vault (when a key is
/// configured) seals and opens them.
///
/// Each seal is bound to its row's generation (`connection::vault`), one more than the stored
/// one, and written only if the row is still at the generation read (another writer's save in
/// between makes it read and seal again). The highest generation of each side this process has
/// opened or sealed is remembered, so a row that goes back to a lower one while the process
/// runs (a whole row copied back from an older database) is refused rather than used.
#[derive(Clone)]
pub struct StoredAuthorizations {
    store: Arc<dyn Store>,
    vault: Option<Vault>,
    newest_seen: Arc<Mutex<BTreeMap<Side, i64>>>,
}

impl StoredAuthorizations {
    pub fn new(store: Arc<dyn Store>, vault: Option<Vault>) -> StoredAuthorizations {
        StoredAuthorizations {
            store,
            vault,
            newest_seen: Arc::default(),
        }
    }

    fn newest_seen(&self, side: Side) -> Option<i64> {
        let seen = self
            .newest_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.get(&side).copied()
    }

    fn saw(&self, side: Side, generation: i64) {
        let mut seen = self
            .newest_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let newest = seen.entry(side).or_insert(generation);
        *newest = (*newest).max(generation);
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

    /// Seals and stores `authorization` for `side` at the next generation; refused without a
    /// key.
    pub async fn save<T: Serialize>(
        &self,
        side: Side,
        authorization: &T,
    ) -> Result<(), AuthorizationError> {
        let vault = self.vault.as_ref().ok_or(VaultError::NoKey)?;
        let plain =
            Zeroizing::new(serde_json::to_vec(authorization).expect("authorizations serialize"));
        for _ in 0..SAVE_ATTEMPTS {
            let stored = self.store.authorization(side.as_str()).await?;
            let generation = stored.map_or(0, |row| row.generation) + 1;
            let sealed = vault.seal(side, generation, &plain);
            if self
                .store
                .save_authorization(side.as_str(), &sealed, &vault.fingerprint(), generation)
                .await?
            {
                // What this process just sealed is the newest, even after a rollback it saw.
                self.newest_seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(side, generation);
                return Ok(());
            }
        }
        Err(AuthorizationError::Contended { side })
    }

    /// The side's stored authorization, if a reconnect stored one. One stored without a key
    /// configured now cannot be opened: that is an error, not "none" — signing in with the old
    /// configured credentials instead would undo the admin's reconnect without a word. One
    /// sealed before generations existed is sealed again, bound to its row, as it is read.
    pub async fn load<T: DeserializeOwned>(
        &self,
        side: Side,
    ) -> Result<Option<T>, AuthorizationError> {
        let Some(row) = self.store.authorization(side.as_str()).await? else {
            return Ok(None);
        };
        let vault = self.vault.as_ref().ok_or(VaultError::NoKey)?;
        if let Some(seen) = self.newest_seen(side)
            && row.generation < seen
        {
            return Err(AuthorizationError::RolledBack {
                side,
                stored: row.generation,
                seen,
            });
        }
        let opened = vault.open(side, row.generation, &row.sealed)?;
        self.saw(side, row.generation);
        if opened.needs_reseal {
            self.reseal(vault, side, row.generation, &opened.plaintext)
                .await;
        }
        serde_json::from_slice(&opened.plaintext)
            .map(Some)
            .map_err(|e| AuthorizationError::Format {
                side,
                problem: e.to_string(),
            })
    }

    /// Seals a blob of the old format again at the next generation, so that it is bound to its
    /// row from now on. A failure leaves the old blob, which still opens; it is only logged.
    async fn reseal(&self, vault: &Vault, side: Side, generation: i64, plaintext: &[u8]) {
        let next = generation + 1;
        let sealed = vault.seal(side, next, plaintext);
        match self
            .store
            .save_authorization(side.as_str(), &sealed, &vault.fingerprint(), next)
            .await
        {
            Ok(true) => {
                self.saw(side, next);
                tracing::info!(
                    side = %side,
                    generation = next,
                    "sealed the stored authorization again, bound to its row"
                );
            }
            // Another process sealed it first: the row is bound already.
            Ok(false) => {}
            Err(error) => tracing::warn!(
                side = %side,
                %error,
                "cannot seal the stored authorization again; it is used as it is"
            ),
        }
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
        assert!(
            !raw.sealed.windows(6).any(|w| w == b"s3cr3t"),
            "sealed at rest"
        );
        assert_eq!(raw.generation, 1);

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

    const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

    fn vault() -> Vault {
        Vault::new(SecretKey::from_base64(KEY, "test").unwrap())
    }

    fn token(refresh_token: &str) -> OutreachAuthorization {
        OutreachAuthorization {
            refresh_token: refresh_token.into(),
        }
    }

    async fn outreach_of(
        stored: &StoredAuthorizations,
    ) -> Result<Option<OutreachAuthorization>, AuthorizationError> {
        stored.load(Side::Outreach).await
    }

    /// A store whose rows the test can also write around the trait, as someone with access to
    /// the database could.
    async fn sqlite() -> (crate::store::SqliteStore, Arc<dyn Store>) {
        let sqlite = crate::store::SqliteStore::open("sqlite::memory:")
            .await
            .unwrap();
        (sqlite.clone(), Arc::new(sqlite))
    }

    async fn put_row(sqlite: &crate::store::SqliteStore, sealed: &[u8], generation: i64) {
        sqlx::query("UPDATE authorizations SET sealed = ?1, generation = ?2 WHERE side = ?3")
            .bind(sealed)
            .bind(generation)
            .bind("outreach")
            .execute(sqlite.pool())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn each_save_seals_at_the_next_generation() {
        let (_, store) = sqlite().await;
        let first = StoredAuthorizations::new(store.clone(), Some(vault()));
        let second = StoredAuthorizations::new(store.clone(), Some(vault()));
        first.save(Side::Outreach, &token("rt-1")).await.unwrap();
        second.save(Side::Outreach, &token("rt-2")).await.unwrap();
        first.save(Side::Outreach, &token("rt-3")).await.unwrap();
        let row = store.authorization("outreach").await.unwrap().unwrap();
        assert_eq!(row.generation, 3);
        assert_eq!(outreach_of(&second).await.unwrap(), Some(token("rt-3")));
        // A writer that read generation 1 cannot overwrite generation 3.
        let stale = vault().seal(Side::Outreach, 2, b"{}");
        assert!(
            !store
                .save_authorization("outreach", &stale, "fp", 2)
                .await
                .unwrap()
        );
        assert_eq!(store.authorization("outreach").await.unwrap().unwrap(), row);
    }

    /// A store holding a spent refresh token at generation 1 and the current one at 2, the
    /// authorizations that saved them, and the row of the spent one.
    async fn spent_then_current() -> (
        crate::store::SqliteStore,
        Arc<dyn Store>,
        StoredAuthorizations,
        crate::store::SealedAuthorization,
    ) {
        let (sqlite, store) = sqlite().await;
        let stored = StoredAuthorizations::new(store.clone(), Some(vault()));
        stored.save(Side::Outreach, &token("spent")).await.unwrap();
        let earlier = store.authorization("outreach").await.unwrap().unwrap();
        stored
            .save(Side::Outreach, &token("current"))
            .await
            .unwrap();
        (sqlite, store, stored, earlier)
    }

    #[tokio::test]
    async fn an_earlier_blob_copied_back_over_the_current_one_is_refused() {
        let (sqlite, store, _, earlier) = spent_then_current().await;

        // Only the blob is put back: the row stays at generation 2.
        put_row(&sqlite, &earlier.sealed, 2).await;
        let fresh = StoredAuthorizations::new(store.clone(), Some(vault()));
        let refused = outreach_of(&fresh).await.unwrap_err();
        assert!(
            matches!(refused, AuthorizationError::Vault(VaultError::Open { .. })),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_whole_row_put_back_while_the_process_runs_is_refused() {
        let (sqlite, _, stored, earlier) = spent_then_current().await;
        assert_eq!(outreach_of(&stored).await.unwrap(), Some(token("current")));

        put_row(&sqlite, &earlier.sealed, earlier.generation).await;
        let refused = outreach_of(&stored).await.unwrap_err();
        assert!(
            matches!(
                refused,
                AuthorizationError::RolledBack {
                    side: Side::Outreach,
                    stored: 1,
                    seen: 2
                }
            ),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn a_blob_sealed_before_generations_opens_once_and_is_bound_to_its_row() {
        let (sqlite, store) = sqlite().await;
        let legacy = vault().seal_side_only(
            Side::Outreach,
            &serde_json::to_vec(&token("rt-legacy")).unwrap(),
        );
        // As the migration leaves a row of an older release: generation 0.
        assert!(
            store
                .save_authorization("outreach", &legacy, &vault().fingerprint(), 0)
                .await
                .unwrap()
        );
        let stored = StoredAuthorizations::new(store.clone(), Some(vault()));
        assert_eq!(
            outreach_of(&stored).await.unwrap(),
            Some(token("rt-legacy"))
        );
        let row = store.authorization("outreach").await.unwrap().unwrap();
        assert_eq!(row.generation, 1, "sealed again at the next generation");
        assert_ne!(row.sealed, legacy);
        let fresh = StoredAuthorizations::new(store.clone(), Some(vault()));
        assert_eq!(
            outreach_of(&fresh).await.unwrap(),
            Some(token("rt-legacy")),
            "and opens bound to its row"
        );

        // The old blob put back over the bound one no longer opens.
        put_row(&sqlite, &legacy, 1).await;
        let refused = outreach_of(&fresh).await.unwrap_err();
        assert!(
            matches!(
                refused,
                AuthorizationError::Vault(VaultError::Replaced { generation: 1, .. })
            ),
            "{refused}"
        );
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
