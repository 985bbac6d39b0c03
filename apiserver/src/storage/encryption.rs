//! Encryption at rest: a [`Storage`] wrapper that encrypts the values of the
//! resources an `EncryptionConfiguration` names on every write and decrypts
//! them on every read (get, list, delete's returned value, watch events and
//! their previous values), so both backends get it for free.
//!
//! The stored bytes are kube-apiserver's, byte for byte:
//!
//! * `aesgcm`: `k8s:enc:aesgcm:v1:<key name>:` + 12-byte random nonce +
//!   AES-GCM ciphertext and tag, with the storage key
//!   (`/registry/secrets/<ns>/<name>`) as additional authenticated data
//!   (upstream's `dataCtx`), so a value copied to another key does not open.
//! * `secretbox`: `k8s:enc:secretbox:v1:<key name>:` + 24-byte random nonce +
//!   NaCl secretbox (XSalsa20-Poly1305: tag then ciphertext); no AAD, as upstream.
//! * `identity`: the plain JSON.
//!
//! As upstream's prefix transformers: the first provider (its first key)
//! writes; every provider is tried for reading by its prefix, and a failure
//! under one never stops a later one with the same prefix from being tried.
//! Unprefixed data is read only when `identity` is listed. A value read with
//! anything but the first provider/key is *stale*: upstream rewrites it even on
//! a no-op update. berth's update path never skips a write (a replace with
//! identical content still writes and bumps `resourceVersion`), so
//! `kubectl get secrets -A -o json | kubectl replace -f -` always re-encrypts
//! with the current first key; [`EncryptedStorage::stale_reads`] counts the
//! reads that still needed an older key.
//!
//! Resources the configuration does not name are passed through, except that
//! encrypted data under them is refused (upstream's default identity
//! transformer), never handed out as if it were JSON.

pub mod config;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use crypto_secretbox::XSalsa20Poly1305;
use futures::StreamExt;

use self::config::{ConfigError, EncryptionConfiguration, GroupResource, ProviderConfig};
use super::{
    Error, ListOptions, ListResult, REGISTRY_ROOT, Result, Storage, Stored, WatchEvent, WatchStream,
};

/// The prefix every encrypted value starts with (reserved by upstream).
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
const SECRETBOX_PREFIX: &str = "k8s:enc:secretbox:v1:";
const GCM_NONCE: usize = 12;
const SECRETBOX_NONCE: usize = 24;

enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<AesGcm<Aes192, U12>>),
    Aes256(Box<Aes256Gcm>),
    Secretbox(Box<XSalsa20Poly1305>),
    Identity,
}

/// One way a value can be stored: a provider with one of its keys.
struct Entry {
    /// `k8s:enc:aesgcm:v1:key1:` (empty for identity).
    prefix: Vec<u8>,
    /// `aesgcm`, `secretbox`, `identity`.
    provider: &'static str,
    /// The key's name ("" for identity).
    key_name: String,
    cipher: Cipher,
}

fn cipher_err(key_name: &str, what: &str) -> String {
    format!("cannot build the cipher of key {key_name:?}: {what}")
}

impl Entry {
    fn new(provider: &ProviderConfig) -> std::result::Result<Vec<Entry>, String> {
        let mut out = Vec::new();
        match provider {
            ProviderConfig::Identity => out.push(Entry {
                prefix: Vec::new(),
                provider: "identity",
                key_name: String::new(),
                cipher: Cipher::Identity,
            }),
            ProviderConfig::AesGcm(keys) => {
                for key in keys {
                    let secret = key.secret.as_slice();
                    let bad = |_| cipher_err(&key.name, "invalid AES key length");
                    let cipher = match secret.len() {
                        16 => Cipher::Aes128(Box::new(
                            Aes128Gcm::new_from_slice(secret).map_err(bad)?,
                        )),
                        24 => Cipher::Aes192(Box::new(
                            AesGcm::<Aes192, U12>::new_from_slice(secret).map_err(bad)?,
                        )),
                        32 => Cipher::Aes256(Box::new(
                            Aes256Gcm::new_from_slice(secret).map_err(bad)?,
                        )),
                        n => return Err(cipher_err(&key.name, &format!("AES key of {n} bytes"))),
                    };
                    out.push(Entry {
                        prefix: format!("{AESGCM_PREFIX}{}:", key.name).into_bytes(),
                        provider: "aesgcm",
                        key_name: key.name.clone(),
                        cipher,
                    });
                }
            }
            ProviderConfig::Secretbox(keys) => {
                for key in keys {
                    let cipher = XSalsa20Poly1305::new_from_slice(key.secret.as_slice())
                        .map_err(|_| cipher_err(&key.name, "a secretbox key must be 32 bytes"))?;
                    out.push(Entry {
                        prefix: format!("{SECRETBOX_PREFIX}{}:", key.name).into_bytes(),
                        provider: "secretbox",
                        key_name: key.name.clone(),
                        cipher: Cipher::Secretbox(Box::new(cipher)),
                    });
                }
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        match self.cipher {
            Cipher::Identity => "identity".to_string(),
            _ => format!("{} key {:?}", self.provider, self.key_name),
        }
    }

    /// `data` without this entry's prefix, opened.
    fn open(&self, aad: &[u8], data: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let short = || {
            format!(
                "{}: the stored data was shorter than the required size",
                self.describe()
            )
        };
        let auth = |_| {
            format!(
                "{}: cipher: message authentication failed (the data was altered, or written under another key or storage key)",
                self.describe()
            )
        };
        let gcm = |data: &[u8]| -> std::result::Result<(aes_gcm::Nonce<U12>, Vec<u8>), String> {
            if data.len() < GCM_NONCE {
                return Err(short());
            }
            let (nonce, ct) = data.split_at(GCM_NONCE);
            Ok((*aes_gcm::Nonce::<U12>::from_slice(nonce), ct.to_vec()))
        };
        match &self.cipher {
            Cipher::Identity => Ok(data.to_vec()),
            Cipher::Aes128(c) => {
                let (n, ct) = gcm(data)?;
                c.decrypt(&n, Payload { msg: &ct, aad }).map_err(auth)
            }
            Cipher::Aes192(c) => {
                let (n, ct) = gcm(data)?;
                c.decrypt(&n, Payload { msg: &ct, aad }).map_err(auth)
            }
            Cipher::Aes256(c) => {
                let (n, ct) = gcm(data)?;
                c.decrypt(&n, Payload { msg: &ct, aad }).map_err(auth)
            }
            Cipher::Secretbox(c) => {
                if data.len() < SECRETBOX_NONCE + 16 {
                    return Err(short());
                }
                let (nonce, boxed) = data.split_at(SECRETBOX_NONCE);
                c.decrypt(crypto_secretbox::Nonce::from_slice(nonce), boxed)
                    .map_err(auth)
            }
        }
    }

    /// This entry's prefix + nonce + sealed `plaintext`.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let nonce_len = match self.cipher {
            Cipher::Identity => return Ok(plaintext.to_vec()),
            Cipher::Secretbox(_) => SECRETBOX_NONCE,
            _ => GCM_NONCE,
        };
        let mut nonce = [0u8; SECRETBOX_NONCE];
        let nonce = &mut nonce[..nonce_len];
        // A nonce must never repeat under a key: no fallback when the OS RNG fails.
        getrandom::fill(nonce).map_err(|e| format!("cannot draw a random nonce: {e}"))?;
        let failed = |_| format!("{}: encryption failed", self.describe());
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        let sealed = match &self.cipher {
            Cipher::Aes128(c) => c.encrypt(aes_gcm::Nonce::<U12>::from_slice(nonce), payload),
            Cipher::Aes192(c) => c.encrypt(aes_gcm::Nonce::<U12>::from_slice(nonce), payload),
            Cipher::Aes256(c) => c.encrypt(aes_gcm::Nonce::<U12>::from_slice(nonce), payload),
            Cipher::Secretbox(c) => {
                c.encrypt(crypto_secretbox::Nonce::from_slice(nonce), plaintext)
            }
            Cipher::Identity => return Ok(plaintext.to_vec()),
        }
        .map_err(failed)?;
        let mut out = Vec::with_capacity(self.prefix.len() + nonce_len + sealed.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

/// The providers of one resource, in order: the first writes, all read.
pub struct Transformer {
    entries: Vec<Entry>,
}

impl Transformer {
    /// The transformer of a provider list (every key of every provider, in order).
    pub fn new(providers: &[ProviderConfig]) -> std::result::Result<Transformer, String> {
        let mut entries = Vec::new();
        for provider in providers {
            entries.extend(Entry::new(provider)?);
        }
        if entries.is_empty() {
            return Err("no providers".into());
        }
        Ok(Transformer { entries })
    }

    /// What writes: `aesgcm key "key1"`, `identity`.
    pub fn writer(&self) -> String {
        self.entries[0].describe()
    }

    /// Encrypt `plaintext` stored at `key` with the first provider.
    pub fn encrypt(&self, key: &str, plaintext: &[u8]) -> std::result::Result<Vec<u8>, String> {
        self.entries[0].seal(key.as_bytes(), plaintext)
    }

    /// Decrypt `data` stored at `key`: the plaintext, and whether it is stale
    /// (read with anything but the first provider/key: a rewrite re-encrypts it).
    pub fn decrypt(&self, key: &str, data: &[u8]) -> std::result::Result<(Vec<u8>, bool), String> {
        let mut errors = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            if let Cipher::Identity = entry.cipher {
                // Identity must not pass ciphertext on as JSON; a later
                // provider may still open it (migrating away from encryption).
                if data.starts_with(ENCRYPTED_PREFIX) {
                    continue;
                }
                return Ok((data.to_vec(), i != 0));
            }
            if let Some(rest) = data.strip_prefix(entry.prefix.as_slice()) {
                match entry.open(key.as_bytes(), rest) {
                    Ok(plain) => return Ok((plain, i != 0)),
                    Err(e) => errors.push(e),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Err(match written_with(data) {
            Some((provider, name)) => format!(
                "no matching prefix found: the value was written with {provider} key {name:?}, which the encryption provider configuration does not list for this resource"
            ),
            None if data.starts_with(ENCRYPTED_PREFIX) => {
                "no matching prefix found: the value is encrypted with a provider this configuration does not list".to_string()
            }
            None => "no matching prefix found: the value is not encrypted, and the encryption provider configuration lists no identity provider to read unencrypted data for this resource".to_string(),
        })
    }
}

/// `(provider, key name)` of an encrypted value's prefix, if it reads as one
/// (`k8s:enc:<provider>:v1:<name>:`); only short printable names are shown.
fn written_with(data: &[u8]) -> Option<(String, String)> {
    let rest = data.strip_prefix(ENCRYPTED_PREFIX)?;
    let head = &rest[..rest.len().min(300)];
    let mut parts = head.splitn(4, |b| *b == b':');
    let provider = parts.next()?;
    let _version = parts.next()?;
    let name = parts.next()?;
    parts.next()?;
    let printable =
        |s: &[u8]| !s.is_empty() && s.len() <= 253 && s.iter().all(|b| b.is_ascii_graphic());
    (printable(provider) && printable(name)).then(|| {
        (
            String::from_utf8_lossy(provider).into_owned(),
            String::from_utf8_lossy(name).into_owned(),
        )
    })
}

/// [`Storage`] that encrypts the values of configured resources (see the module docs).
pub struct EncryptedStorage {
    inner: Arc<dyn Storage>,
    rules: Arc<Rules>,
}

/// The resolved configuration, shared with watch streams (which outlive `&self`).
struct Rules {
    /// `/registry/<resource>/` → its transformer.
    by_prefix: Vec<(String, Transformer)>,
    stale_reads: AtomicU64,
}

/// What [`EncryptedStorage::new`] resolved, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `(resource, writer)`: each encrypted storage prefix's resource and what writes it.
    pub resources: Vec<(String, String)>,
    /// Resources the configuration names that this server does not serve.
    pub unserved: Vec<String>,
}

impl EncryptedStorage {
    /// Wrap `inner`. `served` lists the `(group, resource)` pairs this server
    /// stores (each under `/registry/<resource>/`); a configured resource
    /// applies to them as upstream resolves it: the exact group/resource,
    /// else `*.<group>`, else `*.*`.
    pub fn new(
        inner: Arc<dyn Storage>,
        config: &EncryptionConfiguration,
        served: &[(&str, &str)],
    ) -> std::result::Result<(EncryptedStorage, Resolved), String> {
        // Providers of every rule naming a group/resource, appended in file
        // order (upstream's resourceToPrefixTransformer).
        let mut by_gr: HashMap<GroupResource, Vec<&ProviderConfig>> = HashMap::new();
        let mut order: Vec<GroupResource> = Vec::new();
        for rule in &config.resources {
            for gr in &rule.resources {
                if !by_gr.contains_key(gr) {
                    order.push(gr.clone());
                }
                by_gr
                    .entry(gr.clone())
                    .or_default()
                    .extend(rule.providers.iter());
            }
        }
        let mut built: HashMap<GroupResource, &[ProviderConfig]> = HashMap::new();
        let mut owned: Vec<(GroupResource, Vec<ProviderConfig>)> = Vec::new();
        for gr in &order {
            let providers: Vec<ProviderConfig> =
                by_gr[gr].iter().map(|p| clone_provider(p)).collect();
            owned.push((gr.clone(), providers));
        }
        for (gr, providers) in &owned {
            built.insert(gr.clone(), providers.as_slice());
        }
        let mut rules = Vec::new();
        let mut resolved = Resolved {
            resources: Vec::new(),
            unserved: Vec::new(),
        };
        for (group, resource) in served {
            let exact = GroupResource {
                group: group.to_string(),
                resource: resource.to_string(),
            };
            let in_group = GroupResource {
                group: group.to_string(),
                resource: "*".into(),
            };
            let any = GroupResource {
                group: "*".into(),
                resource: "*".into(),
            };
            let Some((gr, providers)) = [exact, in_group, any]
                .into_iter()
                .find_map(|gr| built.get(&gr).map(|p| (gr.clone(), *p)))
            else {
                continue;
            };
            let prefix = format!("{REGISTRY_ROOT}{resource}/");
            if rules
                .iter()
                .any(|(p, _): &(String, Transformer)| *p == prefix)
            {
                continue;
            }
            // One transformer (one cipher instance per key) per storage prefix.
            let t = Transformer::new(providers)
                .map_err(|e| format!("{}: resource {:?}: {e}", config.path.display(), gr.yaml()))?;
            resolved.resources.push((resource.to_string(), t.writer()));
            rules.push((prefix, t));
        }
        for gr in &order {
            let wildcard = gr.resource == "*";
            let served_here = served.iter().any(|(g, r)| {
                (gr.group == "*" || gr.group == *g) && (wildcard || gr.resource == *r)
            });
            if !served_here {
                resolved.unserved.push(gr.yaml());
            }
        }
        Ok((
            EncryptedStorage {
                inner,
                rules: Arc::new(Rules {
                    by_prefix: rules,
                    stale_reads: AtomicU64::new(0),
                }),
            },
            resolved,
        ))
    }

    /// How many values were read with a provider/key other than the first
    /// (each is re-encrypted with the first by its next write).
    pub fn stale_reads(&self) -> u64 {
        self.rules.stale_reads.load(Ordering::Relaxed)
    }
}

impl Rules {
    fn transformer(&self, key: &str) -> Option<&Transformer> {
        self.by_prefix
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, t)| t)
    }

    fn seal_value(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        match self.transformer(key) {
            Some(t) => t.encrypt(key, &value).map_err(|reason| Error::Transform {
                key: key.to_string(),
                reason,
            }),
            None => Ok(value),
        }
    }

    fn open_value(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        let transform_err = |reason: String| {
            tracing::error!(key, %reason, "cannot decrypt a stored value");
            Error::Transform {
                key: key.to_string(),
                reason,
            }
        };
        match self.transformer(key) {
            Some(t) => {
                let (plain, stale) = t.decrypt(key, &value).map_err(transform_err)?;
                if stale {
                    self.stale_reads.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(key, "value read with a non-primary encryption provider; the next write re-encrypts it");
                }
                Ok(plain)
            }
            None if value.starts_with(ENCRYPTED_PREFIX) => Err(transform_err(
                "identity transformer tried to read encrypted data (the encryption provider configuration does not cover this resource)".into(),
            )),
            None => Ok(value),
        }
    }

    fn open_event(&self, mut ev: WatchEvent) -> Result<WatchEvent> {
        ev.value = self.open_value(&ev.key, std::mem::take(&mut ev.value))?;
        if let Some(prev) = ev.prev_value.take() {
            ev.prev_value = Some(self.open_value(&ev.key, prev)?);
        }
        Ok(ev)
    }
}

/// Read `--encryption-provider-config` (errors name the file and field), and
/// warn when the file is readable by other users.
pub fn load_config(path: &Path) -> std::result::Result<EncryptionConfiguration, ConfigError> {
    let config = EncryptionConfiguration::load(path)?;
    super::private_files::warn_if_exposed(path, "the encryption provider configuration");
    Ok(config)
}

/// Wrap `inner` with `config` for the `served` `(group, resource)` pairs and
/// log what is encrypted with what (key names only).
pub fn wrap(
    inner: Arc<dyn Storage>,
    config: &EncryptionConfiguration,
    served: &[(&str, &str)],
) -> std::result::Result<Arc<dyn Storage>, WrapError> {
    let (storage, resolved) = EncryptedStorage::new(inner, config, served).map_err(WrapError)?;
    for (resource, writer) in &resolved.resources {
        tracing::info!(resource = %resource, writes_with = %writer, "encryption at rest");
    }
    for gr in &resolved.unserved {
        tracing::warn!(
            path = %config.path.display(),
            resource = %gr,
            "the encryption provider configuration names a resource this server does not serve"
        );
    }
    if resolved.resources.is_empty() {
        tracing::warn!(path = %config.path.display(), "the encryption provider configuration covers no served resource");
    }
    Ok(Arc::new(storage))
}

/// The configuration could not be turned into ciphers (see [`wrap`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WrapError(String);

/// Providers hold zeroizing keys and are not `Clone`; rebuilding one for a
/// second resource list copies the key bytes into a new zeroizing buffer.
fn clone_provider(p: &ProviderConfig) -> ProviderConfig {
    let keys = |keys: &[config::Key]| {
        keys.iter()
            .map(|k| config::Key {
                name: k.name.clone(),
                secret: k.secret.clone(),
            })
            .collect()
    };
    match p {
        ProviderConfig::AesGcm(k) => ProviderConfig::AesGcm(keys(k)),
        ProviderConfig::Secretbox(k) => ProviderConfig::Secretbox(keys(k)),
        ProviderConfig::Identity => ProviderConfig::Identity,
    }
}

#[async_trait::async_trait]
impl Storage for EncryptedStorage {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        match self.inner.get(key).await? {
            Some(mut s) => {
                s.value = self.rules.open_value(key, std::mem::take(&mut s.value))?;
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let mut page = self.inner.list(prefix, options).await?;
        for kv in &mut page.items {
            kv.value = self
                .rules
                .open_value(&kv.key, std::mem::take(&mut kv.value))?;
        }
        Ok(page)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64> {
        let value = self.rules.seal_value(key, value)?;
        self.inner.create(key, value).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: Option<i64>,
    ) -> Result<i64> {
        let value = self.rules.seal_value(key, value)?;
        self.inner.update(key, value, expected_mod_revision).await
    }

    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<(i64, Stored)> {
        let (rev, mut old) = self.inner.delete(key, expected_mod_revision).await?;
        old.value = self.rules.open_value(key, std::mem::take(&mut old.value))?;
        Ok((rev, old))
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let stream = self.inner.watch(prefix, from_revision).await?;
        let rules = self.rules.clone();
        // The stream contract: an Err is the last item.
        let mut failed = false;
        Ok(Box::pin(
            stream
                .map(move |item| item.and_then(|ev| rules.open_event(ev)))
                .take_while(move |item| {
                    let go = !failed;
                    failed |= item.is_err();
                    futures::future::ready(go)
                }),
        ))
    }

    async fn current_revision(&self) -> Result<i64> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::config::Key;
    use super::*;
    use zeroize::Zeroizing;

    const KEY: &str = "/registry/secrets/default/s1";

    fn key(name: &str, len: usize, fill: u8) -> Key {
        Key {
            name: name.into(),
            secret: Zeroizing::new(vec![fill; len]),
        }
    }

    fn aes(name: &str, len: usize, fill: u8) -> ProviderConfig {
        ProviderConfig::AesGcm(vec![key(name, len, fill)])
    }

    fn sbox(name: &str, fill: u8) -> ProviderConfig {
        ProviderConfig::Secretbox(vec![key(name, 32, fill)])
    }

    #[test]
    fn aesgcm_layout_and_round_trip_for_every_key_size() {
        for len in [16, 24, 32] {
            let t = Transformer::new(&[aes("key1", len, 7)]).unwrap();
            let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#;
            let stored = t.encrypt(KEY, plain).unwrap();
            let prefix = b"k8s:enc:aesgcm:v1:key1:";
            assert!(stored.starts_with(prefix));
            // prefix + 12-byte nonce + ciphertext + 16-byte tag.
            assert_eq!(stored.len(), prefix.len() + 12 + plain.len() + 16);
            assert!(!stored.windows(8).any(|w| w == b"aHVudGVy"));
            assert_eq!(t.decrypt(KEY, &stored).unwrap(), (plain.to_vec(), false));
            // Two writes of one value differ (random nonce).
            assert_ne!(stored, t.encrypt(KEY, plain).unwrap());
        }
    }

    #[test]
    fn secretbox_layout_and_round_trip() {
        let t = Transformer::new(&[sbox("key2", 9)]).unwrap();
        let stored = t.encrypt(KEY, b"{}").unwrap();
        let prefix = b"k8s:enc:secretbox:v1:key2:";
        assert!(stored.starts_with(prefix));
        assert_eq!(stored.len(), prefix.len() + 24 + 16 + 2);
        assert_eq!(t.decrypt(KEY, &stored).unwrap(), (b"{}".to_vec(), false));
    }

    #[test]
    fn aesgcm_binds_the_storage_key() {
        let t = Transformer::new(&[aes("key1", 32, 1)]).unwrap();
        let stored = t.encrypt(KEY, b"{}").unwrap();
        let e = t
            .decrypt("/registry/secrets/default/other", &stored)
            .unwrap_err();
        assert!(e.contains("message authentication failed"), "{e}");
    }

    #[test]
    fn tampering_any_byte_is_an_error_never_wrong_data() {
        for t in [
            Transformer::new(&[aes("key1", 32, 1)]).unwrap(),
            Transformer::new(&[sbox("key1", 1)]).unwrap(),
        ] {
            let stored = t.encrypt(KEY, b"{\"a\":1}").unwrap();
            // After `k8s:enc:<provider>:v1:<key>:` (the fifth colon: the
            // nonce and ciphertext may hold colons of their own).
            let start = stored
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b':')
                .nth(4)
                .unwrap()
                .0
                + 1;
            for i in start..stored.len() {
                let mut bad = stored.clone();
                bad[i] ^= 0x01;
                assert!(
                    t.decrypt(KEY, &bad).is_err(),
                    "byte {i} flipped was accepted"
                );
            }
            // Truncated to less than a nonce: an error too, not a panic.
            assert!(t.decrypt(KEY, &stored[..start + 3]).is_err());
            assert!(t.decrypt(KEY, &stored[..start]).is_err());
        }
    }

    #[test]
    fn first_provider_writes_all_read_and_older_ones_are_stale() {
        let old = Transformer::new(&[aes("key1", 32, 1)]).unwrap();
        let from_old = old.encrypt(KEY, b"{}").unwrap();
        let rotated =
            Transformer::new(&[aes("key2", 32, 2), aes("key1", 32, 1), sbox("box", 3)]).unwrap();
        assert_eq!(
            rotated.decrypt(KEY, &from_old).unwrap(),
            (b"{}".to_vec(), true)
        );
        let fresh = rotated.encrypt(KEY, b"{}").unwrap();
        assert!(fresh.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        assert_eq!(
            rotated.decrypt(KEY, &fresh).unwrap(),
            (b"{}".to_vec(), false)
        );
        // Two keys of one provider in one list: the second is tried too.
        let two_keys = Transformer::new(&[ProviderConfig::AesGcm(vec![
            key("key2", 32, 2),
            key("key1", 32, 1),
        ])])
        .unwrap();
        assert!(two_keys.decrypt(KEY, &from_old).unwrap().1);
    }

    #[test]
    fn identity_rules() {
        let enc = Transformer::new(&[aes("key1", 32, 1)]).unwrap();
        let ciphertext = enc.encrypt(KEY, b"{}").unwrap();
        // identity first: writes plaintext, still reads encrypted data.
        let id_first = Transformer::new(&[ProviderConfig::Identity, aes("key1", 32, 1)]).unwrap();
        assert_eq!(id_first.encrypt(KEY, b"{}").unwrap(), b"{}");
        assert_eq!(
            id_first.decrypt(KEY, b"{}").unwrap(),
            (b"{}".to_vec(), false)
        );
        assert_eq!(
            id_first.decrypt(KEY, &ciphertext).unwrap(),
            (b"{}".to_vec(), true)
        );
        // identity last: plaintext is readable but stale.
        let id_last = Transformer::new(&[aes("key1", 32, 1), ProviderConfig::Identity]).unwrap();
        assert_eq!(id_last.decrypt(KEY, b"{}").unwrap(), (b"{}".to_vec(), true));
        // No identity: plaintext is refused, clearly.
        let e = enc.decrypt(KEY, b"{}").unwrap_err();
        assert!(e.contains("not encrypted") && e.contains("identity"), "{e}");
        // identity alone never hands out ciphertext as data.
        let only = Transformer::new(&[ProviderConfig::Identity]).unwrap();
        let e = only.decrypt(KEY, &ciphertext).unwrap_err();
        assert!(e.contains(r#"aesgcm key "key1""#), "{e}");
    }

    #[test]
    fn a_missing_key_is_named() {
        let old = Transformer::new(&[sbox("retired-2024", 5)]).unwrap();
        let stored = old.encrypt(KEY, b"{}").unwrap();
        let now = Transformer::new(&[aes("key1", 32, 1)]).unwrap();
        let e = now.decrypt(KEY, &stored).unwrap_err();
        assert!(e.contains(r#"secretbox key "retired-2024""#), "{e}");
        // A key of the same name but other bytes: authentication fails, named.
        let wrong = Transformer::new(&[sbox("retired-2024", 6)]).unwrap();
        let e = wrong.decrypt(KEY, &stored).unwrap_err();
        assert!(
            e.contains(r#"secretbox key "retired-2024": cipher: message authentication failed"#),
            "{e}"
        );
        // Garbage after the reserved prefix: no panic, no echo of the bytes.
        let e = now.decrypt(KEY, b"k8s:enc:\xff\xfe").unwrap_err();
        assert!(e.contains("does not list"), "{e}");
    }

    #[test]
    fn errors_never_carry_key_material() {
        let t = Transformer::new(&[aes("key1", 32, 0x41)]).unwrap();
        let e = t.decrypt(KEY, b"k8s:enc:aesgcm:v1:key1:short").unwrap_err();
        assert!(!e.contains("AAAA"), "{e}");
    }
}
