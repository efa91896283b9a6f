//! SASL client mechanisms: PLAIN and SCRAM-SHA-1/-256 (RFC 5802, RFC 7677), without channel
//! binding. The salted password is cached per (user, password, salt, iterations) so repeated
//! logins of the same account cost two HMACs, not a PBKDF2 run: the load generator must not be
//! the bottleneck of a login storm.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// A server asking for more iterations than this is refused (a cheap DoS on the client).
const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mechanism {
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-1")]
    ScramSha1,
    #[value(name = "PLAIN")]
    Plain,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SaslError {
    #[error("server-first-message is malformed: {0}")]
    BadServerFirst(&'static str),
    #[error("server nonce does not extend the client nonce")]
    NonceMismatch,
    #[error("server asks for {0} iterations (allowed 1..={MAX_ITERATIONS})")]
    Iterations(u64),
    #[error("server-final-message is malformed")]
    BadServerFinal,
    #[error("server reported SCRAM error: {0}")]
    ServerError(String),
    #[error("server signature does not verify: the server does not know the password")]
    BadServerSignature,
    #[error("invalid base64 from server")]
    Base64,
}

/// State of one SCRAM exchange on the client side.
#[derive(Debug)]
pub struct ScramClient {
    hash: ScramHash,
    username: String,
    password: String,
    client_nonce: String,
    /// `AuthMessage` once the server-first message is known; the server signature to expect.
    expected_server_signature: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramClient {
    /// `None` for PLAIN, which has no state.
    pub fn new(mechanism: Mechanism, username: &str, password: &str) -> Option<Self> {
        let hash = match mechanism {
            Mechanism::ScramSha1 => ScramHash::Sha1,
            Mechanism::ScramSha256 => ScramHash::Sha256,
            Mechanism::Plain => return None,
        };
        let nonce: [u8; 18] = rand::random();
        Some(Self::with_nonce(hash, username, password, B64.encode(nonce)))
    }

    fn with_nonce(hash: ScramHash, username: &str, password: &str, client_nonce: String) -> Self {
        Self {
            hash,
            username: username.to_owned(),
            password: password.to_owned(),
            client_nonce,
            expected_server_signature: None,
        }
    }

    fn client_first_bare(&self) -> String {
        let name = self.username.replace('=', "=3D").replace(',', "=2C");
        format!("n={name},r={}", self.client_nonce)
    }

    /// The client-first message (raw bytes, to be base64-encoded by the caller).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare())
    }

    /// Consumes the server-first message and returns the client-final message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, SaslError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| SaslError::BadServerFirst("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = Some(B64.decode(v).map_err(|_| SaslError::Base64)?),
                Some(("i=", v)) => {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| SaslError::BadServerFirst("iteration count"))?;
                    iterations = Some(n);
                }
                Some(("m=", _)) => return Err(SaslError::BadServerFirst("mandatory extension")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(SaslError::BadServerFirst("no nonce"))?;
        let salt = salt.ok_or(SaslError::BadServerFirst("no salt"))?;
        let iterations = iterations.ok_or(SaslError::BadServerFirst("no iteration count"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(SaslError::NonceMismatch);
        }
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|i| (1..=MAX_ITERATIONS).contains(i))
            .ok_or(SaslError::Iterations(iterations))?;
        let keys = derived_keys(self.hash, &self.username, &self.password, &salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare());
        let stored_key = digest(self.hash, &keys.client_key);
        let signature = hmac(self.hash, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = keys
            .client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        self.expected_server_signature = Some(hmac(self.hash, &keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Whether the server-first message has been processed (the proof was sent).
    pub fn has_server_first(&self) -> bool {
        self.expected_server_signature.is_some()
    }

    /// Checks the server-final message (from `<success/>`'s payload or a last challenge).
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let text = std::str::from_utf8(server_final).map_err(|_| SaslError::BadServerFinal)?;
        if let Some(err) = text.strip_prefix("e=") {
            return Err(SaslError::ServerError(err.chars().take(64).collect()));
        }
        let value = text.strip_prefix("v=").ok_or(SaslError::BadServerFinal)?;
        let value = value.split(',').next().unwrap_or_default();
        let signature = B64.decode(value).map_err(|_| SaslError::Base64)?;
        match &self.expected_server_signature {
            Some(expected) if *expected == signature => Ok(()),
            _ => Err(SaslError::BadServerSignature),
        }
    }
}

/// The PLAIN initial response: authzid empty, then username and password.
pub fn plain_initial(username: &str, password: &str) -> Vec<u8> {
    format!("\0{username}\0{password}").into_bytes()
}

#[derive(Clone)]
struct DerivedKeys {
    client_key: Vec<u8>,
    server_key: Vec<u8>,
}

type CacheKey = (ScramHash, String, String, Vec<u8>, u32);

fn cache() -> &'static Mutex<HashMap<CacheKey, DerivedKeys>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, DerivedKeys>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn derived_keys(hash: ScramHash, user: &str, password: &str, salt: &[u8], iterations: u32) -> DerivedKeys {
    let key: CacheKey = (
        hash,
        user.to_owned(),
        password.to_owned(),
        salt.to_vec(),
        iterations,
    );
    // A poisoned lock only means another task panicked mid-insert; the map itself is still valid.
    if let Some(found) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return found.clone();
    }
    let salted = match hash {
        ScramHash::Sha1 => {
            pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(password.as_bytes(), salt, iterations).to_vec()
        }
        ScramHash::Sha256 => {
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations).to_vec()
        }
    };
    let keys = DerivedKeys {
        client_key: hmac(hash, &salted, b"Client Key"),
        server_key: hmac(hash, &salted, b"Server Key"),
    };
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, keys.clone());
    keys
}

fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 section 5 example (SCRAM-SHA-1, user "user", password "pencil").
    #[test]
    fn rfc5802_sha1_vector() {
        let mut client = ScramClient::with_nonce(
            ScramHash::Sha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL".into(),
        );
        assert_eq!(client.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let server_first = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        let fin = client.client_final(server_first).unwrap();
        assert_eq!(
            fin,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        client
            .verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap();
        assert_eq!(
            client.verify_server_final(b"v=AAAA"),
            Err(SaslError::BadServerSignature)
        );
    }

    /// RFC 7677 section 3 example (SCRAM-SHA-256).
    #[test]
    fn rfc7677_sha256_vector() {
        let mut client =
            ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO".into());
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = client.client_final(server_first).unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn rejects_hostile_server_first() {
        let mut c = ScramClient::with_nonce(ScramHash::Sha1, "u", "p", "abc".into());
        assert_eq!(
            c.client_final(b"r=xyz123,s=QUJD,i=4096"),
            Err(SaslError::NonceMismatch)
        );
        assert_eq!(
            c.client_final(b"r=abc,s=QUJD,i=4096"),
            Err(SaslError::NonceMismatch)
        );
        assert_eq!(
            c.client_final(b"r=abcd,s=QUJD,i=0"),
            Err(SaslError::Iterations(0))
        );
        assert_eq!(
            c.client_final(b"r=abcd,s=QUJD,i=99999999999"),
            Err(SaslError::Iterations(99999999999))
        );
        assert!(matches!(
            c.client_final(b"r=abcd,i=4096"),
            Err(SaslError::BadServerFirst(_))
        ));
        assert!(matches!(
            c.client_final(b"m=x,r=abcd,s=QUJD,i=1"),
            Err(SaslError::BadServerFirst(_))
        ));
        assert_eq!(c.client_final(b"r=abcd,s=!!,i=1"), Err(SaslError::Base64));
        assert_eq!(
            c.verify_server_final(b"e=invalid-proof"),
            Err(SaslError::ServerError("invalid-proof".into()))
        );
        assert_eq!(c.verify_server_final(b"junk"), Err(SaslError::BadServerFinal));
    }

    #[test]
    fn username_is_escaped_and_plain_is_nul_separated() {
        let c = ScramClient::with_nonce(ScramHash::Sha256, "a,b=c", "p", "n".into());
        assert_eq!(c.client_first(), "n,,n=a=2Cb=3Dc,r=n");
        assert_eq!(plain_initial("u", "p"), b"\0u\0p");
        assert!(ScramClient::new(Mechanism::Plain, "u", "p").is_none());
    }
}
