//! Authorizations at rest: sealed with an AEAD before they reach the store, opened only in the
//! role that signs in with them.
//!
//! A reconnect hands usersync new credentials (a client secret, a JWT username and key, a
//! refresh token). They must survive a restart, and a copy of the database must not give them
//! away, so the store only ever sees them sealed: XChaCha20-Poly1305 (the RustCrypto
//! `chacha20poly1305` crate) under a 256-bit key that lives outside the database —
//! `USERSYNC_SECRET_KEY` or `secrets.key_file`, base64 of 32 random bytes
//! (`openssl rand -base64 32`). Each seal draws a fresh 192-bit nonce (random nonces are safe
//! at that size). The blob is `format (1 byte) ‖ nonce (24) ‖ ciphertext and tag`.
//!
//! The associated data binds a blob to its row: the side's name, so a Salesforce blob cannot be
//! passed off as Outreach's, and the row's generation, which rises by one at every seal and is
//! stored beside the blob. A blob of an earlier seal of the same side (an older client secret,
//! a spent refresh token) copied back over the current one then no longer opens, since the row
//! says a later generation. Format 1, sealed before generations existed, names the side alone:
//! it opens only in a row still at generation 0, and whoever opens it seals it again at once
//! (format 2, generation 1; `connection::authorization`), so it opens once. What the binding
//! cannot tell is a whole row (blob and generation) put back from an older copy of the
//! database; docs/security.md says what catches that.
//!
//! Nothing here prints a secret: [`SecretKey`]'s `Debug` and every error name the key only by
//! its [`fingerprint`](SecretKey::fingerprint).
//!
//! The key is kept as little as possible (docs/security.md): a key file a group or everyone else
//! may read is refused, as ssh refuses such a private key, since whoever can read it can open
//! every stored credential. The key's bytes, the text they were read from and every opened
//! credential are wiped from memory when dropped (`zeroize`); the cipher's own copy of the key
//! is wiped by `chacha20poly1305` itself when the cipher is dropped, after each seal or open.

use std::fmt;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::Side;

/// The environment variable holding the key.
pub const SECRET_KEY_VAR: &str = "USERSYNC_SECRET_KEY";

/// Sealed with the side alone as associated data, before generations existed.
const FORMAT_SIDE_ONLY: u8 = 1;
/// Sealed with the side and the row's generation as associated data.
const FORMAT_BOUND_TO_ROW: u8 = 2;
const NONCE_LEN: usize = 24;

/// Why sealing or opening failed, or the key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error(
        "no secret key: set {SECRET_KEY_VAR} or secrets.key_file to base64 of 32 random bytes \
         (openssl rand -base64 32); stored credentials are encrypted with it"
    )]
    NoKey,
    #[error("the secret key from {source_name} is not base64 of exactly 32 bytes: {problem}")]
    BadKey {
        source_name: String,
        problem: String,
    },
    #[error("cannot read the secret key file {path}: {problem}")]
    KeyFile { path: String, problem: String },
    #[error(
        "the secret key file {path} has mode {mode:04o}: a group or everyone else may read it, \
         and whoever reads it can open every stored credential; make it its owner's only \
         (chmod 600 {path}) and start again"
    )]
    KeyFileExposed { path: String, mode: u32 },
    #[error(
        "the stored {side} credentials cannot be opened with key {fingerprint} (another key \
         sealed them, or they were altered or replaced by an earlier copy); reconnect to store \
         them again"
    )]
    Open { side: Side, fingerprint: String },
    #[error("the stored {side} credentials are not in a format this version knows")]
    Format { side: Side },
    #[error(
        "the stored {side} credentials were sealed before generations existed, but their row \
         is at generation {generation}: an earlier copy was put back over newer credentials; \
         reconnect to store them again"
    )]
    Replaced { side: Side, generation: i64 },
}

/// The 256-bit key credentials are sealed with; wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SecretKey {}

impl SecretKey {
    /// Reads base64 text (surrounding whitespace ignored); `source_name` names where it came
    /// from in the error.
    pub fn from_base64(text: &str, source_name: &str) -> Result<SecretKey, VaultError> {
        let bad = |problem: String| VaultError::BadKey {
            source_name: source_name.to_owned(),
            problem,
        };
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| bad(e.to_string()))?,
        );
        let mut key = SecretKey([0; 32]);
        if bytes.len() != key.0.len() {
            return Err(bad(format!("{} bytes", bytes.len())));
        }
        key.0.copy_from_slice(&bytes);
        Ok(key)
    }

    /// The key from `USERSYNC_SECRET_KEY` (`env`), else from `key_file` (empty: none); `None`
    /// when neither is set.
    /// A key file a group or everyone else may read is refused ([`VaultError::KeyFileExposed`]).
    pub fn find(env: Option<String>, key_file: &str) -> Result<Option<SecretKey>, VaultError> {
        let env = env.map(Zeroizing::new);
        if let Some(text) = env.as_deref().filter(|t| !t.trim().is_empty()) {
            return SecretKey::from_base64(text, SECRET_KEY_VAR).map(Some);
        }
        if key_file.is_empty() {
            return Ok(None);
        }
        let unreadable = |e: std::io::Error| VaultError::KeyFile {
            path: key_file.to_owned(),
            problem: e.to_string(),
        };
        // The mode of what the path leads to: a key mounted through a symlink (a Kubernetes
        // secret volume) is judged by the file that holds it.
        let metadata = std::fs::metadata(Path::new(key_file)).map_err(unreadable)?;
        if let Some(mode) = crate::private_file::mode(&metadata)
            && mode & crate::private_file::OTHERS != 0
        {
            return Err(VaultError::KeyFileExposed {
                path: key_file.to_owned(),
                mode,
            });
        }
        let text =
            Zeroizing::new(std::fs::read_to_string(Path::new(key_file)).map_err(unreadable)?);
        SecretKey::from_base64(&text, key_file).map(Some)
    }

    /// The first 8 bytes of the key's SHA-256, as hex: names the key without revealing it.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.fingerprint())
    }
}

/// Seals and opens credentials with one key.
#[derive(Clone)]
pub struct Vault {
    key: SecretKey,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vault({})", self.key.fingerprint())
    }
}

/// What a seal is bound to: the side, and the row's generation (`None`: format 1, the side
/// alone).
fn associated_data(side: Side, generation: Option<i64>) -> Vec<u8> {
    match generation {
        None => format!("usersync:authorization:{side}").into_bytes(),
        Some(generation) => {
            format!("usersync:authorization:{side}:generation:{generation}").into_bytes()
        }
    }
}

/// Credentials opened from a blob, wiped from memory when dropped.
#[derive(Debug)]
pub struct Opened {
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Sealed the old way (format 1, the side alone): seal it again, bound to its row.
    pub needs_reseal: bool,
}

impl Vault {
    pub fn new(key: SecretKey) -> Vault {
        Vault { key }
    }

    pub fn fingerprint(&self) -> String {
        self.key.fingerprint()
    }

    /// A cipher under the key; `chacha20poly1305` wipes its copy of the key when it is dropped.
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.key.0).into())
    }

    /// Seals `plaintext` for `side`'s row at `generation`.
    pub fn seal(&self, side: Side, generation: i64, plaintext: &[u8]) -> Vec<u8> {
        self.seal_as(
            FORMAT_BOUND_TO_ROW,
            &associated_data(side, Some(generation)),
            plaintext,
        )
    }

    /// `format ‖ nonce ‖ ciphertext and tag`, under a fresh random nonce.
    fn seal_as(&self, format: u8, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        blob.push(format);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        blob
    }

    /// Opens what [`seal`](Self::seal) made for `side`'s row, which is at `generation`. A blob
    /// of format 1 opens only at generation 0, and then [`Opened::needs_reseal`] says so.
    pub fn open(&self, side: Side, generation: i64, blob: &[u8]) -> Result<Opened, VaultError> {
        if blob.len() < 1 + NONCE_LEN {
            return Err(VaultError::Format { side });
        }
        let bound_to = match blob[0] {
            FORMAT_BOUND_TO_ROW => Some(generation),
            FORMAT_SIDE_ONLY if generation == 0 => None,
            FORMAT_SIDE_ONLY => return Err(VaultError::Replaced { side, generation }),
            _ => return Err(VaultError::Format { side }),
        };
        let (nonce, sealed) = blob[1..].split_at(NONCE_LEN);
        let aad = associated_data(side, bound_to);
        let plaintext = self
            .cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Open {
                side,
                fingerprint: self.fingerprint(),
            })?;
        Ok(Opened {
            plaintext: Zeroizing::new(plaintext),
            needs_reseal: bound_to.is_none(),
        })
    }

    /// Seals the way releases before generations did (format 1): only for the tests of the
    /// migration from it.
    #[cfg(test)]
    pub(crate) fn seal_side_only(&self, side: Side, plaintext: &[u8]) -> Vec<u8> {
        self.seal_as(FORMAT_SIDE_ONLY, &associated_data(side, None), plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

    fn vault() -> Vault {
        Vault::new(SecretKey::from_base64(KEY, "test").unwrap())
    }

    fn opened(vault: &Vault, side: Side, generation: i64, blob: &[u8]) -> Vec<u8> {
        let opened = vault.open(side, generation, blob).unwrap();
        assert!(!opened.needs_reseal);
        opened.plaintext.to_vec()
    }

    #[test]
    fn what_is_sealed_opens_with_the_same_key_side_and_generation_only() {
        let vault = vault();
        let blob = vault.seal(Side::Salesforce, 4, b"client secret 123");
        assert!(
            !blob.windows(6).any(|w| w == b"secret"),
            "the plaintext does not show through"
        );
        assert_eq!(
            opened(&vault, Side::Salesforce, 4, &blob),
            b"client secret 123"
        );
        assert!(matches!(
            vault.open(Side::Outreach, 4, &blob),
            Err(VaultError::Open {
                side: Side::Outreach,
                ..
            })
        ));
        let other = Vault::new(SecretKey([7; 32]));
        assert!(matches!(
            other.open(Side::Salesforce, 4, &blob),
            Err(VaultError::Open { .. })
        ));
        let mut altered = blob.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(vault.open(Side::Salesforce, 4, &altered).is_err());
        assert_eq!(
            vault.open(Side::Salesforce, 4, &[2, 0, 0]).unwrap_err(),
            VaultError::Format {
                side: Side::Salesforce
            }
        );
        let mut unknown = blob.clone();
        unknown[0] = 3;
        assert_eq!(
            vault.open(Side::Salesforce, 4, &unknown).unwrap_err(),
            VaultError::Format {
                side: Side::Salesforce
            }
        );
    }

    #[test]
    fn a_blob_of_an_earlier_seal_does_not_open_in_a_later_row() {
        let vault = vault();
        let old = vault.seal(Side::Outreach, 1, b"spent refresh token");
        let current = vault.seal(Side::Outreach, 2, b"current refresh token");
        assert_eq!(
            opened(&vault, Side::Outreach, 2, &current),
            b"current refresh token"
        );
        let swapped = vault.open(Side::Outreach, 2, &old).unwrap_err();
        assert!(matches!(swapped, VaultError::Open { .. }), "{swapped}");
        assert!(swapped.to_string().contains("earlier copy"), "{swapped}");
    }

    #[test]
    fn a_blob_sealed_before_generations_opens_only_in_a_row_still_at_zero() {
        let vault = vault();
        let legacy = vault.seal_side_only(Side::Salesforce, b"client secret 123");
        let opened = vault.open(Side::Salesforce, 0, &legacy).unwrap();
        assert_eq!(&opened.plaintext[..], b"client secret 123");
        assert!(opened.needs_reseal, "bound to its row at once");
        assert!(matches!(
            vault.open(Side::Outreach, 0, &legacy),
            Err(VaultError::Open { .. })
        ));
        let replaced = vault.open(Side::Salesforce, 1, &legacy).unwrap_err();
        assert_eq!(
            replaced,
            VaultError::Replaced {
                side: Side::Salesforce,
                generation: 1
            }
        );
        assert!(replaced.to_string().contains("reconnect"), "{replaced}");
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let vault = vault();
        assert_ne!(
            vault.seal(Side::Outreach, 1, b"same"),
            vault.seal(Side::Outreach, 1, b"same")
        );
    }

    #[test]
    fn the_key_comes_from_the_variable_then_the_file_and_bad_keys_are_named() {
        assert_eq!(SecretKey::find(None, "").unwrap().map(|k| k.0), None);
        let from_env = SecretKey::find(Some(format!(" {KEY}\n")), "/nonexistent").unwrap();
        assert!(from_env.is_some(), "the variable wins over the file");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        write_private(&file, &format!("{KEY}\n"));
        let from_file = SecretKey::find(None, file.to_str().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(from_file.fingerprint(), from_env.unwrap().fingerprint());

        let short = SecretKey::find(Some("c2hvcnQ=".into()), "").unwrap_err();
        assert_eq!(
            short.to_string(),
            "the secret key from USERSYNC_SECRET_KEY is not base64 of exactly 32 bytes: 5 bytes"
        );
        let missing = SecretKey::find(None, "/nonexistent/key").unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/key"),
            "{missing}"
        );
    }

    /// Writes a key file only its owner may read, as the documentation tells operators to.
    fn write_private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vault.key");
        let path = file.to_str().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            write_private(&file, KEY);
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let refused = SecretKey::find(None, path).unwrap_err();
            assert_eq!(
                refused,
                VaultError::KeyFileExposed {
                    path: path.to_owned(),
                    mode
                }
            );
            let message = refused.to_string();
            assert!(
                message.contains(path)
                    && message.contains(&format!("{mode:04o}"))
                    && message.contains(&format!("chmod 600 {path}")),
                "{message}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(SecretKey::find(None, path).unwrap().is_some(), "{mode:o}");
        }
        // Through a symlink, the mode of the file it leads to counts.
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(SecretKey::find(None, link.to_str().unwrap()).is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretKey::find(None, link.to_str().unwrap()),
            Err(VaultError::KeyFileExposed { mode: 0o644, .. })
        ));
    }

    #[test]
    fn the_key_is_wiped_from_memory_when_dropped() {
        fn wiped_on_drop<T: ZeroizeOnDrop>() {}
        wiped_on_drop::<SecretKey>();
        wiped_on_drop::<XChaCha20Poly1305>();
    }

    #[test]
    fn the_key_is_never_printed() {
        let key = SecretKey::from_base64(KEY, "test").unwrap();
        let shown = format!("{key:?} {:?}", Vault::new(key.clone()));
        assert!(!shown.contains(KEY) && !shown.contains("q83v"), "{shown}");
        assert!(shown.contains(&key.fingerprint()));
    }
}
