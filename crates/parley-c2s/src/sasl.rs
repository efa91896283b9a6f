//! The SASL server (RFC 6120 §6): which mechanisms to offer, the exchanges themselves, and the wire
//! elements. Sans-IO: the session feeds decoded client data in and sends whatever comes out; the only
//! outside calls are to the [`Directory`].
//!
//! Mechanisms: SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), their -PLUS variants with the
//! `tls-exporter` channel binding (RFC 9266), and PLAIN (RFC 4616, only over TLS).
//!
//! SCRAM is implemented here rather than through rsasl 2.3's server. rsasl was checked and falls short
//! on points that matter for a server: an unknown user gets a fresh random salt and a different
//! iteration count on every attempt (so probing reveals who exists) and a final `e=unknown-user`; the
//! StoredKey comparison is a plain `==`, not constant-time; its credential callback is synchronous,
//! while our `Directory` is async; usernames are not unescaped (`=2C`, `=3D`) and the authzid is not
//! checked. rsasl's *client* is still used in the tests, as an independent implementation to talk to.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use minidom::Element;
use parley_directory::{
    AuthOutcome, Directory, DirectoryError, SCRAM_ITERATIONS, SCRAM_SALT_LEN, ScramCredentials, ScramHash,
    constant_time_eq, normalize_localpart, normalize_password,
};
use parley_proto::ns;

/// Largest decoded SASL message accepted from a client. Real SCRAM and PLAIN messages are far smaller.
pub const MAX_CLIENT_DATA_BYTES: usize = 4096;
/// Largest base64 text accepted in `<auth/>` or `<response/>` (the encoding of the above, rounded up).
pub const MAX_BASE64_CHARS: usize = 8192;
/// The only channel binding type Parley offers (RFC 9266); `tls-unique` is undefined for TLS 1.3.
pub const CHANNEL_BINDING_TYPE: &str = "tls-exporter";
/// Random bytes in the server's part of the SCRAM nonce.
const SERVER_NONCE_BYTES: usize = 24;
const MAX_NONCE_CHARS: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mechanism {
    ScramSha256Plus,
    ScramSha1Plus,
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    pub const ALL: [Mechanism; 5] = [
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The IANA mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// Exact, case-sensitive match (SASL mechanism names are upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mechanism| mechanism.name() == name)
    }

    fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256Plus | Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1Plus | Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain => None,
        }
    }

    fn is_plus(self) -> bool {
        matches!(self, Mechanism::ScramSha256Plus | Mechanism::ScramSha1Plus)
    }
}

/// What the session knows about the connection when SASL starts.
#[derive(Clone, Debug)]
pub struct SaslContext {
    /// TLS is on.
    pub secure: bool,
    /// tls-exporter bytes (RFC 9266), computed by the session; None without TLS 1.3/EMS.
    pub channel_binding: Option<Vec<u8>>,
    /// The server's domain, to accept `localpart@domain` as an authzid.
    pub domain: String,
}

/// Mechanisms to advertise: the configured ones, -PLUS only when channel_binding is Some, SCRAM only when
/// the directory supports it, PLAIN only when secure. Order follows `configured`.
pub fn offered_mechanisms(
    configured: &[Mechanism],
    ctx: &SaslContext,
    directory_supports_scram: bool,
) -> Vec<Mechanism> {
    let mut offered = Vec::new();
    for &mechanism in configured {
        let usable = match mechanism {
            Mechanism::Plain => ctx.secure,
            m if m.is_plus() => directory_supports_scram && ctx.channel_binding.is_some(),
            _ => directory_supports_scram,
        };
        if usable && !offered.contains(&mechanism) {
            offered.push(mechanism);
        }
    }
    offered
}

/// RFC 6120 §6.5 failure conditions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SaslFailure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    /// The element name of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// The next thing to send to the client.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SaslStep {
    Challenge(Vec<u8>),
    Success {
        localpart: String,
        additional_data: Option<Vec<u8>>,
    },
    Failure(SaslFailure),
}

/// One authentication attempt, from `<auth/>` to `<success/>` or `<failure/>`.
pub struct SaslExchange {
    mechanism: Mechanism,
    ctx: SaslContext,
    directory: Arc<dyn Directory>,
    /// Whether any -PLUS mechanism was advertised: then a client answering `y` is being downgraded.
    plus_offered: bool,
    state: State,
}

impl std::fmt::Debug for SaslExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslExchange")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

enum State {
    /// Waiting for the first client message; `prompted` once we answered a missing initial response with
    /// an empty challenge.
    Start {
        prompted: bool,
    },
    ScramFinal(Box<ScramPending>),
    Done,
}

/// What SCRAM remembers between the server-first and the client-final message.
struct ScramPending {
    /// None for an unknown user: the exchange runs to the end with made-up credentials and fails.
    localpart: Option<String>,
    authzid: Option<String>,
    credentials: ScramCredentials,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// What `c=` must decode to: the gs2 header, plus the channel binding data for -PLUS.
    expected_channel_binding: Vec<u8>,
}

impl SaslExchange {
    /// `offered` is what was advertised: a mechanism not in it → InvalidMechanism; PLAIN without TLS →
    /// EncryptionRequired.
    pub fn start(
        mechanism: &str,
        offered: &[Mechanism],
        ctx: SaslContext,
        directory: Arc<dyn Directory>,
    ) -> Result<Self, SaslFailure> {
        let mechanism = Mechanism::from_name(mechanism).ok_or(SaslFailure::InvalidMechanism)?;
        if mechanism == Mechanism::Plain && !ctx.secure {
            return Err(SaslFailure::EncryptionRequired);
        }
        if !offered.contains(&mechanism) {
            return Err(SaslFailure::InvalidMechanism);
        }
        if mechanism.is_plus() && ctx.channel_binding.is_none() {
            return Err(SaslFailure::InvalidMechanism);
        }
        let plus_offered = offered.iter().any(|m| m.is_plus());
        Ok(SaslExchange {
            mechanism,
            ctx,
            directory,
            plus_offered,
            state: State::Start { prompted: false },
        })
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Feed the decoded client data (the initial response, then each `<response/>`); returns the next
    /// step. After a Success or Failure the exchange is over and further input is a MalformedRequest.
    pub async fn step(&mut self, client_data: &[u8]) -> SaslStep {
        if client_data.len() > MAX_CLIENT_DATA_BYTES {
            self.state = State::Done;
            return SaslStep::Failure(SaslFailure::MalformedRequest);
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start { prompted: false } if client_data.is_empty() => {
                // No initial response: both PLAIN and SCRAM are client-first, so ask with an empty challenge.
                self.state = State::Start { prompted: true };
                SaslStep::Challenge(Vec::new())
            }
            State::Start { .. } => match self.mechanism.scram_hash() {
                None => self.plain(client_data).await,
                Some(hash) => match self.scram_first(hash, client_data).await {
                    Ok((pending, challenge)) => {
                        self.state = State::ScramFinal(Box::new(pending));
                        SaslStep::Challenge(challenge)
                    }
                    Err(failure) => SaslStep::Failure(failure),
                },
            },
            State::ScramFinal(pending) => self.scram_final(&pending, client_data),
            State::Done => SaslStep::Failure(SaslFailure::MalformedRequest),
        }
    }

    async fn plain(&self, message: &[u8]) -> SaslStep {
        let (authzid, authcid, password) = match parse_plain(message) {
            Ok(parts) => parts,
            Err(failure) => return SaslStep::Failure(failure),
        };
        let (Ok(localpart), Ok(password)) = (normalize_localpart(authcid), normalize_password(password))
        else {
            return SaslStep::Failure(SaslFailure::NotAuthorized);
        };
        match self.directory.authenticate(&localpart, &password).await {
            Ok(AuthOutcome::Accepted) => {
                // Checked only after the password, so a bad authzid reveals nothing about the account.
                if !authzid.is_empty() && !authzid_names(authzid, &localpart, &self.ctx.domain) {
                    return SaslStep::Failure(SaslFailure::InvalidAuthzid);
                }
                SaslStep::Success {
                    localpart,
                    additional_data: None,
                }
            }
            Ok(AuthOutcome::Rejected) => SaslStep::Failure(SaslFailure::NotAuthorized),
            Err(err) => SaslStep::Failure(directory_failure(&err)),
        }
    }

    async fn scram_first(
        &self,
        hash: ScramHash,
        message: &[u8],
    ) -> Result<(ScramPending, Vec<u8>), SaslFailure> {
        let first = ClientFirst::parse(message)?;
        let channel_binding_data = self.check_channel_binding_flag(&first.channel_binding)?;

        let localpart = normalize_localpart(&first.username).ok();
        let stored = match &localpart {
            Some(localpart) => self
                .directory
                .scram_credentials(localpart, hash)
                .await
                .map_err(|err| directory_failure(&err))?,
            None => None,
        };
        let (localpart, credentials) = match (localpart, stored) {
            (Some(localpart), Some(credentials)) if credentials.hash == hash => {
                (Some(localpart), credentials)
            }
            _ => (None, fake_credentials(hash, &first.username)),
        };

        let server_nonce = BASE64.encode(rand::random::<[u8; SERVER_NONCE_BYTES]>());
        let nonce = format!("{}{}", first.nonce, server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credentials.salt),
            credentials.iterations
        );
        let mut expected_channel_binding = first.gs2_header.as_bytes().to_vec();
        expected_channel_binding.extend_from_slice(channel_binding_data);
        let challenge = server_first.as_bytes().to_vec();
        Ok((
            ScramPending {
                localpart,
                authzid: first.authzid,
                credentials,
                client_first_bare: first.bare.to_owned(),
                server_first,
                nonce,
                expected_channel_binding,
            },
            challenge,
        ))
    }

    /// Apply RFC 5802 §6 to the gs2 channel binding flag; returns the binding data `c=` must carry.
    fn check_channel_binding_flag(&self, flag: &ChannelBindingFlag) -> Result<&[u8], SaslFailure> {
        match (self.mechanism.is_plus(), flag) {
            (true, ChannelBindingFlag::Used(name)) if name == CHANNEL_BINDING_TYPE => self
                .ctx
                .channel_binding
                .as_deref()
                .ok_or(SaslFailure::NotAuthorized),
            // A binding type we don't offer.
            (true, ChannelBindingFlag::Used(_)) => Err(SaslFailure::NotAuthorized),
            // -PLUS without binding, or binding with a non-PLUS mechanism: contradictory.
            (true, _) | (false, ChannelBindingFlag::Used(_)) => Err(SaslFailure::MalformedRequest),
            // "y": the client could bind but thinks we can't, yet we offered -PLUS: someone stripped it.
            (false, ChannelBindingFlag::ClientThinksServerCannot) if self.plus_offered => {
                Err(SaslFailure::NotAuthorized)
            }
            (false, _) => Ok(&[]),
        }
    }

    fn scram_final(&self, pending: &ScramPending, message: &[u8]) -> SaslStep {
        let final_message = match ClientFinal::parse(message) {
            Ok(final_message) => final_message,
            Err(failure) => return SaslStep::Failure(failure),
        };
        if final_message.nonce != pending.nonce {
            return SaslStep::Failure(SaslFailure::NotAuthorized);
        }
        let Ok(channel_binding) = BASE64.decode(final_message.channel_binding) else {
            return SaslStep::Failure(SaslFailure::MalformedRequest);
        };
        let Ok(proof) = BASE64.decode(final_message.proof) else {
            return SaslStep::Failure(SaslFailure::MalformedRequest);
        };
        let credentials = &pending.credentials;
        let hash = credentials.hash;
        let auth_message = format!(
            "{},{},{}",
            pending.client_first_bare, pending.server_first, final_message.without_proof
        );
        let client_signature = hash.hmac(&credentials.stored_key, auth_message.as_bytes());
        let proof_ok = proof.len() == client_signature.len() && {
            let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(p, s)| p ^ s).collect();
            constant_time_eq(&hash.digest(&client_key), &credentials.stored_key)
        };
        let binding_ok = channel_binding == pending.expected_channel_binding;
        let localpart = match &pending.localpart {
            Some(localpart) if proof_ok && binding_ok => localpart.clone(),
            _ => return SaslStep::Failure(SaslFailure::NotAuthorized),
        };
        if let Some(authzid) = &pending.authzid
            && !authzid_names(authzid, &localpart, &self.ctx.domain)
        {
            return SaslStep::Failure(SaslFailure::InvalidAuthzid);
        }
        let server_signature = hash.hmac(&credentials.server_key, auth_message.as_bytes());
        let server_final = format!("v={}", BASE64.encode(server_signature));
        SaslStep::Success {
            localpart,
            additional_data: Some(server_final.into_bytes()),
        }
    }
}

/// Map a directory error to what the client is told; details stay in our log.
fn directory_failure(err: &DirectoryError) -> SaslFailure {
    if !matches!(err, DirectoryError::Unavailable(_)) {
        tracing::warn!(error = %err, "directory error during SASL");
    }
    SaslFailure::TemporaryAuthFailure
}

/// Does `authzid` name the account `localpart` (as `localpart` or `localpart@domain`)?
fn authzid_names(authzid: &str, localpart: &str, domain: &str) -> bool {
    let (local, authz_domain) = match authzid.split_once('@') {
        Some((local, authz_domain)) => (local, Some(authz_domain)),
        None => (authzid, None),
    };
    if let Some(authz_domain) = authz_domain {
        // A domainpart is compared case-insensitively; no resource allowed (it would contain '/').
        let authz_domain = authz_domain.strip_suffix('.').unwrap_or(authz_domain);
        if !authz_domain.eq_ignore_ascii_case(domain) {
            return false;
        }
    }
    normalize_localpart(local).is_ok_and(|normalized| normalized == localpart)
}

/// Made-up but stable credentials for a user who does not exist, so the first challenge looks the same as
/// for a real one: the salt is a keyed hash of the username under a per-process random key (stable across
/// attempts, unpredictable to the client) and the iteration count is the one real accounts get.
fn fake_credentials(hash: ScramHash, username: &str) -> ScramCredentials {
    static PROCESS_KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = PROCESS_KEY.get_or_init(rand::random);
    let label = match hash {
        ScramHash::Sha1 => "sha1",
        ScramHash::Sha256 => "sha256",
    };
    let mut salt = hash.hmac(key, format!("fake-salt\0{label}\0{username}").as_bytes());
    salt.truncate(SCRAM_SALT_LEN);
    ScramCredentials {
        hash,
        salt,
        iterations: SCRAM_ITERATIONS,
        stored_key: vec![0; hash.output_len()],
        server_key: vec![0; hash.output_len()],
    }
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616).
fn parse_plain(message: &[u8]) -> Result<(&str, &str, &str), SaslFailure> {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    let text = |bytes| std::str::from_utf8(bytes).map_err(|_| SaslFailure::MalformedRequest);
    let (authzid, authcid, password) = (text(authzid)?, text(authcid)?, text(password)?);
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok((authzid, authcid, password))
}

// ---- SCRAM message parsing (RFC 5802 §7) ------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum ChannelBindingFlag {
    /// "n": the client does not support channel binding.
    ClientCannot,
    /// "y": the client supports it but believes the server does not.
    ClientThinksServerCannot,
    /// "p=name".
    Used(String),
}

#[derive(Debug)]
struct ClientFirst<'a> {
    channel_binding: ChannelBindingFlag,
    authzid: Option<String>,
    username: String,
    nonce: &'a str,
    /// gs2-header including its trailing comma, as sent.
    gs2_header: &'a str,
    /// client-first-message-bare, as sent (part of AuthMessage).
    bare: &'a str,
}

impl<'a> ClientFirst<'a> {
    fn parse(message: &'a [u8]) -> Result<Self, SaslFailure> {
        let text = std::str::from_utf8(message).map_err(|_| SaslFailure::MalformedRequest)?;
        let mut gs2 = text.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (gs2.next(), gs2.next(), gs2.next()) else {
            return Err(SaslFailure::MalformedRequest);
        };
        let channel_binding = match flag {
            "n" => ChannelBindingFlag::ClientCannot,
            "y" => ChannelBindingFlag::ClientThinksServerCannot,
            _ => match flag.strip_prefix("p=") {
                Some(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    ChannelBindingFlag::Used(name.to_owned())
                }
                _ => return Err(SaslFailure::MalformedRequest),
            },
        };
        let authzid = match authzid {
            "" => None,
            _ => Some(decode_saslname(
                authzid.strip_prefix("a=").ok_or(SaslFailure::MalformedRequest)?,
            )?),
        };
        let gs2_header = &text[..text.len() - bare.len()];

        let mut attributes = bare.split(',');
        let username = match attributes.next() {
            Some(attr) if attr.starts_with("m=") => return Err(SaslFailure::MalformedRequest),
            Some(attr) => decode_saslname(attr.strip_prefix("n=").ok_or(SaslFailure::MalformedRequest)?)?,
            None => return Err(SaslFailure::MalformedRequest),
        };
        let nonce = attributes
            .next()
            .and_then(|attr| attr.strip_prefix("r="))
            .filter(|nonce| is_valid_nonce(nonce))
            .ok_or(SaslFailure::MalformedRequest)?;
        if !attributes.all(is_extension) {
            return Err(SaslFailure::MalformedRequest);
        }
        Ok(ClientFirst {
            channel_binding,
            authzid,
            username,
            nonce,
            gs2_header,
            bare,
        })
    }
}

#[derive(Debug)]
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: &'a str,
    /// client-final-message-without-proof, as sent (part of AuthMessage).
    without_proof: &'a str,
}

impl<'a> ClientFinal<'a> {
    fn parse(message: &'a [u8]) -> Result<Self, SaslFailure> {
        let text = std::str::from_utf8(message).map_err(|_| SaslFailure::MalformedRequest)?;
        // The proof is always the last attribute.
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslFailure::MalformedRequest)?;
        let mut attributes = without_proof.split(',');
        let channel_binding = attributes
            .next()
            .and_then(|attr| attr.strip_prefix("c="))
            .ok_or(SaslFailure::MalformedRequest)?;
        let nonce = attributes
            .next()
            .and_then(|attr| attr.strip_prefix("r="))
            .filter(|nonce| is_valid_nonce(nonce))
            .ok_or(SaslFailure::MalformedRequest)?;
        if !attributes.all(is_extension) || proof.is_empty() || proof.contains(',') {
            return Err(SaslFailure::MalformedRequest);
        }
        Ok(ClientFinal {
            channel_binding,
            nonce,
            proof,
            without_proof,
        })
    }
}

/// RFC 5802 `printable` minus ',' for nonces, bounded in length.
fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty() && nonce.len() <= MAX_NONCE_CHARS && nonce.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// An optional extension attribute `x=value` (ignored, but must be well-formed).
fn is_extension(attr: &str) -> bool {
    let bytes = attr.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'=' && !attr.contains('\0')
}

/// Undo SCRAM's saslname escaping: `=2C` is ',' and `=3D` is '='; any other '=' is an error.
fn decode_saslname(escaped: &str) -> Result<String, SaslFailure> {
    if escaped.is_empty() || escaped.contains('\0') {
        return Err(SaslFailure::MalformedRequest);
    }
    let mut decoded = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(index) = rest.find('=') {
        decoded.push_str(&rest[..index]);
        let escape = rest.get(index..index + 3);
        decoded.push(match escape {
            Some("=2C") => ',',
            Some("=3D") => '=',
            _ => return Err(SaslFailure::MalformedRequest),
        });
        rest = &rest[index + 3..];
    }
    decoded.push_str(rest);
    Ok(decoded)
}

// ---- wire elements (RFC 6120 §6.4) ------------------------------------------------------------------

/// A SASL element from the client, with its base64 content decoded.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ClientMessage {
    /// `initial_response` is None when the element was empty, `Some(vec![])` for "=".
    Auth {
        mechanism: String,
        initial_response: Option<Vec<u8>>,
    },
    Response(Vec<u8>),
    Abort,
}

/// Parse `<auth/>`, `<response/>` or `<abort/>` in the SASL namespace. None when `element` is not in the
/// SASL namespace (the caller decides what that means at this point of the stream).
pub fn parse_client_message(element: &Element) -> Option<Result<ClientMessage, SaslFailure>> {
    if element.ns() != ns::SASL {
        return None;
    }
    Some(match element.name() {
        "auth" => match element.attr("mechanism") {
            None => Err(SaslFailure::InvalidMechanism),
            Some(mechanism) => decode_payload(element).map(|data| ClientMessage::Auth {
                mechanism: mechanism.to_owned(),
                initial_response: data,
            }),
        },
        "response" => decode_payload(element).map(|data| ClientMessage::Response(data.unwrap_or_default())),
        "abort" => Ok(ClientMessage::Abort),
        _ => Err(SaslFailure::MalformedRequest),
    })
}

/// The element's base64 text: None when empty, empty for "=", IncorrectEncoding when not base64.
fn decode_payload(element: &Element) -> Result<Option<Vec<u8>>, SaslFailure> {
    if element.children().next().is_some() {
        return Err(SaslFailure::MalformedRequest);
    }
    let text = element.text();
    if text.len() > MAX_BASE64_CHARS {
        return Err(SaslFailure::MalformedRequest);
    }
    match text.as_str() {
        "" => Ok(None),
        "=" => Ok(Some(Vec::new())),
        _ => BASE64
            .decode(text.as_bytes())
            .map(Some)
            .map_err(|_| SaslFailure::IncorrectEncoding),
    }
}

/// Base64 for the wire, with "=" standing for zero-length data (RFC 6120 §6.4.2).
fn encode_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        BASE64.encode(data)
    }
}

pub fn challenge_element(data: &[u8]) -> Element {
    Element::builder("challenge", ns::SASL)
        .append(encode_payload(data))
        .build()
}

/// `<success/>`, empty when there is no additional data.
pub fn success_element(additional_data: Option<&[u8]>) -> Element {
    let builder = Element::builder("success", ns::SASL);
    match additional_data {
        Some(data) => builder.append(encode_payload(data)).build(),
        None => builder.build(),
    }
}

pub fn failure_element(failure: SaslFailure) -> Element {
    Element::builder("failure", ns::SASL)
        .append(Element::bare(failure.as_str(), ns::SASL))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_directory::{Person, ScramHash};
    use rsasl::callback::{Context, Request, SessionCallback, SessionData};
    use rsasl::mechanisms::plain::PLAIN;
    use rsasl::mechanisms::scram::{SCRAM_SHA1, SCRAM_SHA1_PLUS, SCRAM_SHA256, SCRAM_SHA256_PLUS};
    use rsasl::prelude::{ChannelBindingCallback, Mechname, SASLClient, SASLConfig, SessionError, State};
    use rsasl::prelude::{Mechanism as RsaslMechanism, Registry};
    use rsasl::property::{AuthId, AuthzId, Password};
    use std::collections::HashMap;
    use tokio::sync::broadcast;

    const DOMAIN: &str = "example.com";
    const BINDING: &[u8] = b"exporter-bytes-of-this-tls-connection";

    /// A directory in memory: passwords in clear (tests only) and SCRAM credentials derived from them.
    struct MemoryDirectory {
        accounts: HashMap<String, (String, ScramCredentials, ScramCredentials)>,
        unavailable: bool,
        changes: broadcast::Sender<parley_directory::DirectoryChange>,
    }

    impl MemoryDirectory {
        fn with_users(users: &[(&str, &str)]) -> Arc<Self> {
            let accounts = users
                .iter()
                .map(|(user, password)| {
                    let sha1 = ScramCredentials::derive(ScramHash::Sha1, password, b"salt-one", 4096);
                    let sha256 = ScramCredentials::derive(ScramHash::Sha256, password, b"salt-two", 4096);
                    (user.to_string(), (password.to_string(), sha1, sha256))
                })
                .collect();
            Arc::new(MemoryDirectory {
                accounts,
                unavailable: false,
                changes: broadcast::channel(4).0,
            })
        }

        fn unavailable() -> Arc<Self> {
            Arc::new(MemoryDirectory {
                accounts: HashMap::new(),
                unavailable: true,
                changes: broadcast::channel(4).0,
            })
        }

        fn check(&self) -> Result<(), DirectoryError> {
            if self.unavailable {
                Err(DirectoryError::Unavailable("test backend down".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait::async_trait]
    impl Directory for MemoryDirectory {
        async fn authenticate(&self, localpart: &str, password: &str) -> Result<AuthOutcome, DirectoryError> {
            self.check()?;
            Ok(match self.accounts.get(localpart) {
                Some((stored, _, _)) if stored == password => AuthOutcome::Accepted,
                _ => AuthOutcome::Rejected,
            })
        }
        async fn scram_credentials(
            &self,
            localpart: &str,
            hash: ScramHash,
        ) -> Result<Option<ScramCredentials>, DirectoryError> {
            self.check()?;
            Ok(self.accounts.get(localpart).map(|(_, sha1, sha256)| match hash {
                ScramHash::Sha1 => sha1.clone(),
                ScramHash::Sha256 => sha256.clone(),
            }))
        }
        fn supports_scram(&self) -> bool {
            true
        }
        async fn person(&self, _localpart: &str) -> Result<Option<Person>, DirectoryError> {
            Ok(None)
        }
        async fn people(&self) -> Result<Vec<Person>, DirectoryError> {
            Ok(Vec::new())
        }
        async fn members(&self, _group: &str) -> Result<Vec<String>, DirectoryError> {
            Ok(Vec::new())
        }
        fn subscribe(&self) -> broadcast::Receiver<parley_directory::DirectoryChange> {
            self.changes.subscribe()
        }
    }

    // ---- rsasl client plumbing ----

    struct ClientCredentials {
        authid: String,
        password: String,
        authzid: Option<String>,
        channel_binding: bool,
    }

    impl SessionCallback for ClientCredentials {
        fn callback(
            &self,
            _session_data: &SessionData,
            _context: &Context,
            request: &mut Request<'_>,
        ) -> Result<(), SessionError> {
            request
                .satisfy::<AuthId>(&self.authid)?
                .satisfy::<Password>(self.password.as_bytes())?;
            if let Some(authzid) = &self.authzid {
                request.satisfy::<AuthzId>(authzid)?;
            }
            Ok(())
        }
        fn enable_channel_binding(&self) -> bool {
            self.channel_binding
        }
    }

    struct ClientBinding(Vec<u8>);
    impl ChannelBindingCallback for ClientBinding {
        fn get_cb_data(&self, cbname: &str) -> Option<&[u8]> {
            (cbname == CHANNEL_BINDING_TYPE).then_some(self.0.as_slice())
        }
    }

    static CLIENT_MECHANISMS: [RsaslMechanism; 5] = [
        SCRAM_SHA256_PLUS,
        SCRAM_SHA1_PLUS,
        SCRAM_SHA256,
        SCRAM_SHA1,
        PLAIN,
    ];

    struct Client<'a> {
        user: &'a str,
        password: &'a str,
        authzid: Option<&'a str>,
        /// Channel binding data the client sees on its side of the TLS connection, if any.
        binding: Option<&'a [u8]>,
        /// What the client believes the server advertised.
        advertised: &'a [Mechanism],
    }

    fn secure_ctx(binding: Option<&[u8]>) -> SaslContext {
        SaslContext {
            secure: true,
            channel_binding: binding.map(<[u8]>::to_vec),
            domain: DOMAIN.into(),
        }
    }

    /// Run a full exchange between the rsasl client and our server. Returns the server's last step and
    /// whether the client accepted the server's final message.
    async fn run(
        client: Client<'_>,
        server_offered: &[Mechanism],
        ctx: SaslContext,
        directory: Arc<dyn Directory>,
    ) -> (SaslStep, Option<bool>) {
        let config = SASLConfig::builder()
            .with_registry(Registry::with_mechanisms(&CLIENT_MECHANISMS))
            .with_callback(ClientCredentials {
                authid: client.user.into(),
                password: client.password.into(),
                authzid: client.authzid.map(String::from),
                channel_binding: client.binding.is_some(),
            })
            .unwrap();
        let sasl = SASLClient::with_cb(config, ClientBinding(client.binding.unwrap_or_default().to_vec()));
        let names: Vec<&Mechname> = client
            .advertised
            .iter()
            .map(|m| Mechname::parse(m.name().as_bytes()).unwrap())
            .collect();
        let mut session = sasl.start_suggested(&names).unwrap();
        let chosen = session.get_mechname().as_str().to_owned();
        let mut exchange = SaslExchange::start(&chosen, server_offered, ctx, directory).unwrap();

        let mut out = Vec::new();
        session.step(None, &mut out).unwrap();
        loop {
            match exchange.step(&out).await {
                SaslStep::Challenge(challenge) => {
                    out.clear();
                    session.step(Some(&challenge), &mut out).unwrap();
                }
                SaslStep::Success {
                    localpart,
                    additional_data,
                } => {
                    let verified = additional_data.as_ref().map(|data| {
                        let mut sink = Vec::new();
                        matches!(session.step(Some(data), &mut sink), Ok(State::Finished(_)))
                    });
                    return (
                        SaslStep::Success {
                            localpart,
                            additional_data,
                        },
                        verified,
                    );
                }
                failure @ SaslStep::Failure(_) => return (failure, None),
            }
        }
    }

    fn alice() -> Arc<dyn Directory> {
        MemoryDirectory::with_users(&[("alice", "pencil"), ("bob", "secret")])
    }

    fn client<'a>(user: &'a str, password: &'a str, advertised: &'a [Mechanism]) -> Client<'a> {
        Client {
            user,
            password,
            authzid: None,
            binding: None,
            advertised,
        }
    }

    fn assert_success(result: (SaslStep, Option<bool>), expected_localpart: &str) {
        match result {
            (SaslStep::Success { localpart, .. }, verified) => {
                assert_eq!(localpart, expected_localpart);
                assert_ne!(verified, Some(false), "client rejected the server signature");
            }
            (other, _) => panic!("expected success, got {other:?}"),
        }
    }

    // ---- full exchanges ----

    #[tokio::test]
    async fn scram_sha256_plus_with_matching_binding() {
        let offered = [Mechanism::ScramSha256Plus, Mechanism::ScramSha256];
        let mut c = client("alice", "pencil", &offered);
        c.binding = Some(BINDING);
        let result = run(c, &offered, secure_ctx(Some(BINDING)), alice()).await;
        assert_eq!(result.1, Some(true));
        assert_success(result, "alice");
    }

    #[tokio::test]
    async fn scram_sha1_plus_with_matching_binding() {
        let offered = [Mechanism::ScramSha1Plus];
        let mut c = client("alice", "pencil", &offered);
        c.binding = Some(BINDING);
        assert_success(
            run(c, &offered, secure_ctx(Some(BINDING)), alice()).await,
            "alice",
        );
    }

    #[tokio::test]
    async fn scram_plus_with_mismatched_binding_fails() {
        let offered = [Mechanism::ScramSha256Plus];
        let mut c = client("alice", "pencil", &offered);
        c.binding = Some(b"what a man in the middle sees");
        let (step, _) = run(c, &offered, secure_ctx(Some(BINDING)), alice()).await;
        assert_eq!(step, SaslStep::Failure(SaslFailure::NotAuthorized));
    }

    #[tokio::test]
    async fn downgrade_with_y_flag_fails_when_plus_was_offered() {
        // The server offered -PLUS, but an attacker stripped it from what the client saw; the client can
        // bind, so it says "y".
        let server_offered = [Mechanism::ScramSha256Plus, Mechanism::ScramSha256];
        let seen_by_client = [Mechanism::ScramSha256];
        let mut c = client("alice", "pencil", &seen_by_client);
        c.binding = Some(BINDING);
        let (step, _) = run(c, &server_offered, secure_ctx(Some(BINDING)), alice()).await;
        assert_eq!(step, SaslStep::Failure(SaslFailure::NotAuthorized));
    }

    #[tokio::test]
    async fn raw_y_flag_rejected_when_plus_offered() {
        let offered = [Mechanism::ScramSha256Plus, Mechanism::ScramSha256];
        let mut exchange =
            SaslExchange::start("SCRAM-SHA-256", &offered, secure_ctx(Some(BINDING)), alice()).unwrap();
        assert_eq!(
            exchange.step(b"y,,n=alice,r=abc").await,
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
        let mut exchange =
            SaslExchange::start("SCRAM-SHA-256", &offered, secure_ctx(Some(BINDING)), alice()).unwrap();
        assert!(matches!(
            exchange.step(b"n,,n=alice,r=abc").await,
            SaslStep::Challenge(_)
        ));
    }

    #[tokio::test]
    async fn y_flag_is_fine_when_plus_was_not_offered() {
        let offered = [Mechanism::ScramSha256];
        let mut c = client("alice", "pencil", &offered);
        c.binding = Some(BINDING);
        assert_success(run(c, &offered, secure_ctx(None), alice()).await, "alice");
    }

    #[tokio::test]
    async fn scram_sha1_and_sha256_without_binding() {
        for mechanism in [Mechanism::ScramSha1, Mechanism::ScramSha256] {
            let offered = [mechanism];
            let result = run(
                client("alice", "pencil", &offered),
                &offered,
                secure_ctx(None),
                alice(),
            )
            .await;
            assert_eq!(result.1, Some(true), "{mechanism:?}");
            assert_success(result, "alice");
        }
    }

    #[tokio::test]
    async fn scram_wrong_password() {
        let offered = [Mechanism::ScramSha256];
        let (step, _) = run(
            client("alice", "pencil2", &offered),
            &offered,
            secure_ctx(None),
            alice(),
        )
        .await;
        assert_eq!(step, SaslStep::Failure(SaslFailure::NotAuthorized));
    }

    #[tokio::test]
    async fn scram_unknown_user_fails_only_at_the_end() {
        let offered = [Mechanism::ScramSha256];
        let (step, _) = run(
            client("mallory", "pencil", &offered),
            &offered,
            secure_ctx(None),
            alice(),
        )
        .await;
        assert_eq!(step, SaslStep::Failure(SaslFailure::NotAuthorized));
    }

    /// The salt and iteration parts of the first challenge.
    async fn first_challenge_shape(user: &str) -> (usize, String, String) {
        let offered = [Mechanism::ScramSha256];
        let mut exchange = SaslExchange::start("SCRAM-SHA-256", &offered, secure_ctx(None), alice()).unwrap();
        let SaslStep::Challenge(challenge) = exchange.step(format!("n,,n={user},r=abcdef").as_bytes()).await
        else {
            panic!("no challenge for {user}");
        };
        let text = String::from_utf8(challenge).unwrap();
        let parts: Vec<&str> = text.split(',').collect();
        assert_eq!(parts.len(), 3, "{text}");
        assert!(
            parts[0].starts_with("r=abcdef") && parts[0].len() > "r=abcdef".len() + 20,
            "{text}"
        );
        (parts.len(), parts[1].to_owned(), parts[2].to_owned())
    }

    #[tokio::test]
    async fn unknown_user_first_challenge_looks_like_a_real_one() {
        let (_, real_salt, real_iterations) = first_challenge_shape("alice").await;
        let (_, fake_salt, fake_iterations) = first_challenge_shape("mallory").await;
        let (_, fake_salt_again, _) = first_challenge_shape("mallory").await;
        let (_, other_fake_salt, _) = first_challenge_shape("trudy").await;
        assert_eq!(real_iterations, "i=4096");
        assert_eq!(fake_iterations, real_iterations);
        // Same length of salt as the directory's default, stable per user, different between users.
        assert_eq!(BASE64.decode(&fake_salt[2..]).unwrap().len(), SCRAM_SALT_LEN);
        assert_eq!(fake_salt, fake_salt_again);
        assert_ne!(fake_salt, other_fake_salt);
        assert_ne!(fake_salt, real_salt);
    }

    #[tokio::test]
    async fn scram_authzid_same_account_is_accepted() {
        let offered = [Mechanism::ScramSha256];
        for authzid in ["alice", "alice@example.com", "Alice@EXAMPLE.com"] {
            let mut c = client("alice", "pencil", &offered);
            c.authzid = Some(authzid);
            assert_success(run(c, &offered, secure_ctx(None), alice()).await, "alice");
        }
    }

    #[tokio::test]
    async fn scram_authzid_other_account_is_rejected() {
        let offered = [Mechanism::ScramSha256];
        for authzid in [
            "bob",
            "bob@example.com",
            "alice@elsewhere.org",
            "alice@example.com/phone",
        ] {
            let mut c = client("alice", "pencil", &offered);
            c.authzid = Some(authzid);
            let (step, _) = run(c, &offered, secure_ctx(None), alice()).await;
            assert_eq!(step, SaslStep::Failure(SaslFailure::InvalidAuthzid), "{authzid}");
        }
    }

    #[tokio::test]
    async fn plain_success_wrong_password_and_unknown_user() {
        let offered = [Mechanism::Plain];
        assert_success(
            run(
                client("alice", "pencil", &offered),
                &offered,
                secure_ctx(None),
                alice(),
            )
            .await,
            "alice",
        );
        // Case-folded username.
        assert_success(
            run(
                client("ALICE", "pencil", &offered),
                &offered,
                secure_ctx(None),
                alice(),
            )
            .await,
            "alice",
        );
        for (user, password) in [("alice", "wrong"), ("mallory", "pencil")] {
            let (step, _) = run(
                client(user, password, &offered),
                &offered,
                secure_ctx(None),
                alice(),
            )
            .await;
            assert_eq!(step, SaslStep::Failure(SaslFailure::NotAuthorized), "{user}");
        }
    }

    #[tokio::test]
    async fn plain_authzid() {
        let offered = [Mechanism::Plain];
        let mut c = client("alice", "pencil", &offered);
        c.authzid = Some("alice@example.com");
        assert_success(run(c, &offered, secure_ctx(None), alice()).await, "alice");
        let mut c = client("alice", "pencil", &offered);
        c.authzid = Some("bob");
        let (step, _) = run(c, &offered, secure_ctx(None), alice()).await;
        assert_eq!(step, SaslStep::Failure(SaslFailure::InvalidAuthzid));
    }

    #[tokio::test]
    async fn directory_unavailable_is_temporary_failure() {
        let directory: Arc<dyn Directory> = MemoryDirectory::unavailable();
        for mechanism in [Mechanism::Plain, Mechanism::ScramSha256] {
            let offered = [mechanism];
            let (step, _) = run(
                client("alice", "pencil", &offered),
                &offered,
                secure_ctx(None),
                directory.clone(),
            )
            .await;
            assert_eq!(
                step,
                SaslStep::Failure(SaslFailure::TemporaryAuthFailure),
                "{mechanism:?}"
            );
        }
    }

    // ---- start, offers and malformed input ----

    #[test]
    fn start_refuses_what_was_not_offered() {
        let offered = [Mechanism::ScramSha256];
        let start =
            |name: &str, ctx: SaslContext| SaslExchange::start(name, &offered, ctx, alice()).map(|_| ());
        assert_eq!(
            start("DIGEST-MD5", secure_ctx(None)),
            Err(SaslFailure::InvalidMechanism)
        );
        assert_eq!(
            start("scram-sha-256", secure_ctx(None)),
            Err(SaslFailure::InvalidMechanism)
        );
        assert_eq!(
            start("SCRAM-SHA-1", secure_ctx(None)),
            Err(SaslFailure::InvalidMechanism)
        );
        assert_eq!(start("SCRAM-SHA-256", secure_ctx(None)), Ok(()));
        let plaintext = SaslContext {
            secure: false,
            channel_binding: None,
            domain: DOMAIN.into(),
        };
        assert_eq!(start("PLAIN", plaintext), Err(SaslFailure::EncryptionRequired));
        assert_eq!(
            start("PLAIN", secure_ctx(None)),
            Err(SaslFailure::InvalidMechanism)
        );
        let plus = [Mechanism::ScramSha256Plus];
        assert_eq!(
            SaslExchange::start("SCRAM-SHA-256-PLUS", &plus, secure_ctx(None), alice()).map(|_| ()),
            Err(SaslFailure::InvalidMechanism)
        );
    }

    #[test]
    fn offers_follow_tls_binding_and_directory() {
        let configured = Mechanism::ALL;
        let plain_tcp = SaslContext {
            secure: false,
            channel_binding: None,
            domain: DOMAIN.into(),
        };
        assert_eq!(
            offered_mechanisms(&configured, &plain_tcp, true),
            vec![Mechanism::ScramSha256, Mechanism::ScramSha1]
        );
        assert_eq!(
            offered_mechanisms(&configured, &secure_ctx(None), true),
            vec![Mechanism::ScramSha256, Mechanism::ScramSha1, Mechanism::Plain]
        );
        assert_eq!(
            offered_mechanisms(&configured, &secure_ctx(Some(BINDING)), true),
            configured.to_vec()
        );
        assert_eq!(
            offered_mechanisms(&configured, &secure_ctx(Some(BINDING)), false),
            vec![Mechanism::Plain]
        );
        assert!(offered_mechanisms(&configured, &plain_tcp, false).is_empty());
        assert_eq!(
            offered_mechanisms(&[Mechanism::Plain, Mechanism::ScramSha1], &secure_ctx(None), true),
            vec![Mechanism::Plain, Mechanism::ScramSha1]
        );
    }

    #[test]
    fn mechanism_names_round_trip() {
        for mechanism in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(mechanism.name()), Some(mechanism));
        }
        assert_eq!(Mechanism::from_name("SCRAM-SHA-512"), None);
        assert_eq!(Mechanism::from_name(""), None);
    }

    async fn first_step(mechanism: Mechanism, data: &[u8]) -> SaslStep {
        let offered = [mechanism];
        let mut exchange =
            SaslExchange::start(mechanism.name(), &offered, secure_ctx(Some(BINDING)), alice()).unwrap();
        exchange.step(data).await
    }

    #[tokio::test]
    async fn malformed_client_first_messages() {
        let malformed: [&[u8]; 14] = [
            b"n,,r=abc",
            b"x,,n=alice,r=abc",
            b"n,,n=alice",
            b"n,,n=alice,r=",
            b"n,,n=alice,r=a b",
            b"n,,m=ext,n=alice,r=abc",
            b"n,,n=al=2Xice,r=abc",
            b"n,,n=alice=,r=abc",
            b"n,b=x,n=alice,r=abc",
            b"n,a=,n=alice,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=alice,r=abc,,",
            b"p=tls-exporter,,n=alice,r=abc",
            b"\xff\xfe,,n=alice,r=abc",
        ];
        for message in malformed {
            assert_eq!(
                first_step(Mechanism::ScramSha256, message).await,
                SaslStep::Failure(SaslFailure::MalformedRequest),
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        // -PLUS without binding, and an unoffered binding type.
        assert_eq!(
            first_step(Mechanism::ScramSha256Plus, b"n,,n=alice,r=abc").await,
            SaslStep::Failure(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            first_step(Mechanism::ScramSha256Plus, b"p=tls-unique,,n=alice,r=abc").await,
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
        assert_eq!(
            first_step(Mechanism::ScramSha256, &vec![b'a'; MAX_CLIENT_DATA_BYTES + 1]).await,
            SaslStep::Failure(SaslFailure::MalformedRequest)
        );
    }

    #[tokio::test]
    async fn malformed_client_final_messages() {
        for final_message in [
            "",
            "c=biws",
            "c=biws,r=abc",
            "r=abc,c=biws,p=AAAA",
            "c=biws,r=x,p=AAAA",
            "c=!!,r=NONCE,p=AAAA",
        ] {
            let mut exchange =
                SaslExchange::start("SCRAM-SHA-1", &[Mechanism::ScramSha1], secure_ctx(None), alice())
                    .unwrap();
            let SaslStep::Challenge(challenge) = exchange.step(b"n,,n=alice,r=abc").await else {
                panic!("no challenge");
            };
            let text = String::from_utf8(challenge).unwrap();
            let nonce = text.split(',').next().unwrap().strip_prefix("r=").unwrap();
            let message = final_message.replace("NONCE", nonce);
            let step = exchange.step(message.as_bytes()).await;
            assert!(
                matches!(
                    step,
                    SaslStep::Failure(SaslFailure::MalformedRequest | SaslFailure::NotAuthorized)
                ),
                "{final_message:?} gave {step:?}"
            );
            // The exchange is over.
            assert_eq!(
                exchange.step(b"anything").await,
                SaslStep::Failure(SaslFailure::MalformedRequest)
            );
        }
    }

    #[tokio::test]
    async fn missing_initial_response_gets_one_empty_challenge() {
        let offered = [Mechanism::Plain];
        let mut exchange = SaslExchange::start("PLAIN", &offered, secure_ctx(None), alice()).unwrap();
        assert_eq!(exchange.step(b"").await, SaslStep::Challenge(Vec::new()));
        assert_eq!(
            exchange.step(b"").await,
            SaslStep::Failure(SaslFailure::MalformedRequest)
        );

        let mut exchange = SaslExchange::start("PLAIN", &offered, secure_ctx(None), alice()).unwrap();
        assert_eq!(exchange.step(b"").await, SaslStep::Challenge(Vec::new()));
        assert!(matches!(
            exchange.step(b"\0alice\0pencil").await,
            SaslStep::Success { .. }
        ));
    }

    #[tokio::test]
    async fn malformed_plain_messages() {
        for message in [
            &b"alice\0pencil"[..],
            b"\0alice\0pencil\0",
            b"\0\0pencil",
            b"\0alice\0",
            b"\0al\xffice\0pencil",
        ] {
            assert_eq!(
                first_step(Mechanism::Plain, message).await,
                SaslStep::Failure(SaslFailure::MalformedRequest),
                "{message:?}"
            );
        }
        assert_eq!(
            first_step(Mechanism::Plain, b"\0a@b\0pencil").await,
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn saslname_unescaping() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(decode_saslname("a=2").is_err());
        assert!(decode_saslname("a=41").is_err());
        assert!(decode_saslname("").is_err());
    }

    // ---- wire elements ----

    fn sasl_element(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn parses_auth_response_and_abort() {
        let ns = ns::SASL;
        assert_eq!(
            parse_client_message(&sasl_element(&format!(
                "<auth xmlns='{ns}' mechanism='PLAIN'>AGEAYg==</auth>"
            ))),
            Some(Ok(ClientMessage::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(b"\0a\0b".to_vec())
            }))
        );
        assert_eq!(
            parse_client_message(&sasl_element(&format!(
                "<auth xmlns='{ns}' mechanism='SCRAM-SHA-1'/>"
            ))),
            Some(Ok(ClientMessage::Auth {
                mechanism: "SCRAM-SHA-1".into(),
                initial_response: None
            }))
        );
        assert_eq!(
            parse_client_message(&sasl_element(&format!(
                "<auth xmlns='{ns}' mechanism='X'>=</auth>"
            ))),
            Some(Ok(ClientMessage::Auth {
                mechanism: "X".into(),
                initial_response: Some(Vec::new())
            }))
        );
        assert_eq!(
            parse_client_message(&sasl_element(&format!("<response xmlns='{ns}'>YWJj</response>"))),
            Some(Ok(ClientMessage::Response(b"abc".to_vec())))
        );
        assert_eq!(
            parse_client_message(&sasl_element(&format!("<response xmlns='{ns}'/>"))),
            Some(Ok(ClientMessage::Response(Vec::new())))
        );
        assert_eq!(
            parse_client_message(&sasl_element(&format!("<abort xmlns='{ns}'/>"))),
            Some(Ok(ClientMessage::Abort))
        );
    }

    #[test]
    fn rejects_bad_sasl_elements() {
        let ns = ns::SASL;
        let parse = |xml: String| parse_client_message(&sasl_element(&xml));
        assert_eq!(
            parse(format!("<response xmlns='{ns}'>!!notbase64</response>")),
            Some(Err(SaslFailure::IncorrectEncoding))
        );
        assert_eq!(
            parse(format!("<response xmlns='{ns}'>YWJ</response>")),
            Some(Err(SaslFailure::IncorrectEncoding))
        );
        assert_eq!(
            parse(format!("<auth xmlns='{ns}'>AGEAYg==</auth>")),
            Some(Err(SaslFailure::InvalidMechanism))
        );
        assert_eq!(
            parse(format!("<auth xmlns='{ns}' mechanism='PLAIN'><x/></auth>")),
            Some(Err(SaslFailure::MalformedRequest))
        );
        assert_eq!(
            parse(format!("<success xmlns='{ns}'/>")),
            Some(Err(SaslFailure::MalformedRequest))
        );
        let huge = "A".repeat(MAX_BASE64_CHARS + 4);
        assert_eq!(
            parse(format!("<response xmlns='{ns}'>{huge}</response>")),
            Some(Err(SaslFailure::MalformedRequest))
        );
        assert_eq!(
            parse("<auth xmlns='jabber:client' mechanism='PLAIN'/>".into()),
            None
        );
    }

    #[test]
    fn builds_server_elements() {
        let challenge = challenge_element(b"abc");
        assert!(challenge.is("challenge", ns::SASL));
        assert_eq!(challenge.text(), "YWJj");
        assert_eq!(challenge_element(b"").text(), "=");
        assert_eq!(success_element(None).text(), "");
        assert_eq!(success_element(Some(b"v=x")).text(), "dj14");
        let failure = failure_element(SaslFailure::TemporaryAuthFailure);
        assert!(failure.is("failure", ns::SASL));
        let condition = failure.children().next().unwrap();
        assert!(condition.is("temporary-auth-failure", ns::SASL));
    }

    #[test]
    fn failure_names_match_rfc6120() {
        assert_eq!(SaslFailure::NotAuthorized.as_str(), "not-authorized");
        assert_eq!(SaslFailure::InvalidAuthzid.as_str(), "invalid-authzid");
        assert_eq!(
            SaslFailure::TemporaryAuthFailure.as_str(),
            "temporary-auth-failure"
        );
        assert_eq!(SaslFailure::EncryptionRequired.as_str(), "encryption-required");
    }
}
