//! JWT validation and the channel ACL (PROTOCOL.md section 1 and 3).
//!
//! Owns the key and the validation rules; turns a token into an
//! [`Identity`], and answers "may this identity watch that channel". It does
//! no IO once built (the public key file is read at start-up).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::AuthConfig;
use crate::protocol::{Channel, ChannelKind};

/// Why a token was refused. Every variant answers `401` (or `UNAUTHORIZED`
/// in-band) with [`AuthError::message`]; none of them is fatal to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the first source, or an empty one.
    #[error("missing token")]
    Missing,
    /// Malformed, bad signature, wrong or `none` algorithm.
    #[error("invalid token")]
    Invalid,
    /// `exp` + leeway has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` - leeway is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` differs from `auth.issuer`.
    #[error("invalid issuer")]
    Issuer,
    /// `aud` differs from `auth.audience`.
    #[error("invalid audience")]
    Audience,
    /// No usable user id, no `exp`, or claims of the wrong type (also an
    /// `exp` or `nbf` that is negative or beyond u64, which jsonwebtoken
    /// does not read as a time).
    #[error("invalid claims")]
    Claims,
}

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every channel; agent and system alerts; the publish API; stats.
    Admin,
    /// The publish API; otherwise a plain user.
    Service,
    /// The servers of its `servers` claim and the ones it owns.
    User,
}

/// A validated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub` (or `user_id`).
    pub user: Uuid,
    /// From `role`.
    pub role: Role,
    /// From `servers`.
    pub servers: Box<[Uuid]>,
    /// `exp`, unix seconds (one beyond `i64::MAX` reads as `i64::MAX`; use
    /// saturating arithmetic on it).
    pub exp: i64,
}

/// Token validation and minting with the configured key.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    secret: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Which user owns which server (config `[[servers]] owner`).
    owners: HashMap<Uuid, Uuid>,
}

impl Authenticator {
    /// Builds the validator from the `[auth]` config and the server owners.
    ///
    /// # Errors
    /// A sentence for a config error: no key, both keys, an unreadable or
    /// unsupported public key.
    pub fn new(cfg: &AuthConfig, owners: HashMap<Uuid, Uuid>) -> Result<Authenticator, String> {
        if !crate::es256::install() {
            log::debug!("another jsonwebtoken provider is in place: ES256 tokens are checked by the slower code");
        }
        let (key, algorithm) = match (&cfg.jwt_secret, &cfg.jwt_public_key) {
            (Some(_), Some(_)) => return Err("auth.jwt_secret and auth.jwt_public_key are both set; use one".into()),
            (None, None) => {
                return Err("no JWT key: set auth.jwt_secret (or AYMC_JWT_SECRET) or auth.jwt_public_key".into())
            }
            (Some(secret), None) => {
                let key = DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|_| "auth.jwt_secret must not be empty".to_string())?;
                (key, Algorithm::HS256)
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| format!("auth.jwt_public_key: cannot read {path}: {e}"))?;
                public_key(&pem).ok_or_else(|| {
                    format!("auth.jwt_public_key: {path} is not a PEM RSA, EC (P-256) or Ed25519 public key")
                })?
            }
        };
        let mut validation = Validation::new(algorithm);
        // jsonwebtoken computes `now - leeway` and `now + leeway` in u64:
        // `Config::validate` keeps the leeway to a day, and so does this for
        // an unvalidated config.
        validation.leeway = cfg.leeway_s.min(crate::config::MAX_DURATION_S);
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Authenticator {
            key,
            validation,
            secret: cfg.jwt_secret.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            owners,
        })
    }

    /// Which user owns which server.
    pub fn owners(&self) -> &HashMap<Uuid, Uuid> {
        &self.owners
    }

    /// Replaces the owners (a reloaded `[[servers]]`); access is checked
    /// against them from the next check on.
    pub fn set_owners(&mut self, owners: HashMap<Uuid, Uuid>) {
        self.owners = owners;
    }

    /// Validates a token (signature, algorithm, `exp`, `nbf`, `iss`, `aud`,
    /// user id) as section 1 says.
    ///
    /// # Errors
    /// The [`AuthError`] whose message the `401` carries.
    pub fn validate(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidIssuer => AuthError::Issuer,
                    ErrorKind::InvalidAudience => AuthError::Audience,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::Issuer,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::Audience,
                    ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => AuthError::Claims,
                    _ => AuthError::Invalid,
                }
            })?;
        identity(&data.claims).ok_or(AuthError::Claims)
    }

    /// Mints a token signed with the configured secret (`aymc-hub token`).
    ///
    /// # Errors
    /// When only a public key is configured, or signing fails.
    pub fn mint(&self, user: Uuid, role: Option<&str>, servers: &[Uuid], ttl_s: i64) -> Result<String, String> {
        let secret = self
            .secret
            .as_ref()
            .ok_or("only auth.jwt_public_key is configured; the hub cannot sign tokens without auth.jwt_secret")?;
        let now = chrono::Utc::now().timestamp();
        let mut claims = Map::new();
        claims.insert("sub".into(), serde_json::json!(user));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now.saturating_add(ttl_s)));
        if let Some(role) = role {
            claims.insert("role".into(), Value::from(role));
        }
        if !servers.is_empty() {
            claims.insert("servers".into(), serde_json::json!(servers));
        }
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), Value::from(iss.as_str()));
        }
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), Value::from(aud.as_str()));
        }
        let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())
    }

    /// May `who` watch server `server` (its channels and its alerts)?
    pub fn may_watch(&self, who: &Identity, server: Uuid) -> bool {
        who.role == Role::Admin || who.servers.contains(&server) || self.owners.get(&server) == Some(&who.user)
    }

    /// May `who` subscribe to `channel`?
    pub fn may_subscribe(&self, who: &Identity, channel: &Channel) -> bool {
        match channel.kind {
            ChannelKind::Notifications => who.role == Role::Admin || who.user == channel.id,
            _ => self.may_watch(who, channel.id),
        }
    }
}

/// Reads a PEM public key and picks the one algorithm of its type.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return crate::es256::is_p256(&key).then_some((key, Algorithm::ES256));
    }
    DecodingKey::from_ed_pem(pem).ok().map(|key| (key, Algorithm::EdDSA))
}

/// The identity in validated claims; `None` when no usable user id, no
/// numeric `exp`, or `servers` is not an array of UUIDs.
fn identity(claims: &Map<String, Value>) -> Option<Identity> {
    let uuid = |key: &str| claims.get(key).and_then(Value::as_str).and_then(|s| Uuid::try_parse(s).ok());
    let user = uuid("sub").or_else(|| uuid("user_id"))?;
    let role = match claims.get("role").and_then(Value::as_str) {
        Some("admin") => Role::Admin,
        Some("service") => Role::Service,
        _ => Role::User,
    };
    let servers = match claims.get("servers") {
        None | Some(Value::Null) => Box::default(),
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().and_then(|s| Uuid::try_parse(s).ok())).collect::<Option<Box<[Uuid]>>>()?
        }
        Some(_) => return None,
    };
    let exp = claims.get("exp").and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))?;
    Some(Identity { user, role, servers, exp })
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "123e4567-e89b-12d3-a456-426614174000";
    const SERVER: &str = "550e8400-e29b-41d4-a716-446655440000";

    fn auth() -> Authenticator {
        let cfg = AuthConfig { jwt_secret: Some("s3cret".into()), ..AuthConfig::default() };
        let owners = HashMap::from([(Uuid::parse_str(SERVER).unwrap(), Uuid::parse_str(USER).unwrap())]);
        Authenticator::new(&cfg, owners).unwrap()
    }

    fn sign(claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap())
            .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn refusals_have_the_protocol_messages() {
        let a = auth();
        let exp = now() + 600;
        let cases = [
            (String::new(), AuthError::Missing),
            ("abc".into(), AuthError::Invalid),
            (sign(serde_json::json!({"sub": USER, "exp": exp}), "other"), AuthError::Invalid),
            (sign(serde_json::json!({"sub": USER, "exp": now() - 3600}), "s3cret"), AuthError::Expired),
            (sign(serde_json::json!({"sub": USER, "exp": exp, "nbf": now() + 3600}), "s3cret"), AuthError::NotYetValid),
            (sign(serde_json::json!({"sub": "bob", "exp": exp}), "s3cret"), AuthError::Claims),
            (sign(serde_json::json!({"sub": USER}), "s3cret"), AuthError::Claims),
            (sign(serde_json::json!({"sub": USER, "exp": exp, "servers": "x"}), "s3cret"), AuthError::Claims),
        ];
        for (token, want) in cases {
            assert_eq!(a.validate(&token), Err(want), "{token}");
        }
        // alg: none, unsigned.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            "eyJzdWIiOiIxMjNlNDU2Ny1lODliLTEyZDMtYTQ1Ni00MjY2MTQxNzQwMDAiLCJleHAiOjk5OTk5OTk5OTl9"
        );
        assert_eq!(a.validate(&none), Err(AuthError::Invalid));
    }

    #[test]
    fn times_at_the_ends_of_the_integers_are_answered_not_panicked_on() {
        let cfg = AuthConfig { jwt_secret: Some("s3cret".into()), leeway_s: u64::MAX, ..AuthConfig::default() };
        let a = Authenticator::new(&cfg, HashMap::new()).unwrap();
        let token = |exp: Value, nbf: Value| {
            let mut claims = serde_json::json!({"sub": USER, "exp": exp});
            if !nbf.is_null() {
                claims["nbf"] = nbf;
            }
            sign(claims, "s3cret")
        };
        let soon = Value::from(now() + 600);
        for exp in [Value::from(i64::MAX), Value::from(u64::MAX), Value::from(1e19)] {
            assert_eq!(a.validate(&token(exp.clone(), Value::Null)).map(|i| i.exp), Ok(i64::MAX), "{exp}");
        }
        let cases = [
            (Value::from(i64::MIN), Value::Null, AuthError::Claims),
            (Value::from(-1), Value::Null, AuthError::Claims),
            (Value::from(1e300), Value::Null, AuthError::Claims),
            (soon.clone(), Value::from(u64::MAX), AuthError::NotYetValid),
            (soon.clone(), Value::from(i64::MIN), AuthError::Claims),
        ];
        for (exp, nbf, want) in cases {
            assert_eq!(a.validate(&token(exp.clone(), nbf.clone())), Err(want), "exp {exp}, nbf {nbf}");
        }
        // A day of leeway at most: a token that expired two days ago is refused.
        assert_eq!(a.validate(&token(Value::from(now() - 2 * 86_400), Value::Null)), Err(AuthError::Expired));
    }

    #[test]
    fn es256_tokens_are_checked_with_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = aymc_loadgen::tokens::openssl_keypair(dir.path(), "ec", "k").unwrap();
        let cfg = AuthConfig { jwt_public_key: Some(public.display().to_string()), ..AuthConfig::default() };
        let a = Authenticator::new(&cfg, HashMap::new()).unwrap();
        let signer = aymc_loadgen::tokens::Signer::pem(Algorithm::ES256, &private).unwrap();
        let es = |claims: Value| signer.sign(&claims).unwrap();
        let exp = now() + 600;
        assert_eq!(a.validate(&es(serde_json::json!({"sub": USER, "exp": exp}))).map(|i| i.exp), Ok(exp));
        let cases = [
            (es(serde_json::json!({"sub": USER, "exp": now() - 3600})), AuthError::Expired),
            (es(serde_json::json!({"sub": USER, "exp": exp, "nbf": now() + 3600})), AuthError::NotYetValid),
            (es(serde_json::json!({"sub": USER})), AuthError::Claims),
            // The right claims signed with an HMAC key: the wrong algorithm.
            (sign(serde_json::json!({"sub": USER, "exp": exp}), "s3cret"), AuthError::Invalid),
        ];
        for (token, want) in cases {
            assert_eq!(a.validate(&token), Err(want), "{token}");
        }
    }

    /// An EC key on a curve other than P-256 (here P-384 and secp256k1,
    /// made with `openssl genpkey`) could check no ES256 token: the hub
    /// refuses it at start instead of refusing every token.
    #[test]
    fn an_ec_public_key_must_be_on_p256() {
        const P384: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAExe7UzgT0MLL9ztfhoir2TXw+70xd4W95
K2KtwO4/1BSqPngowODjq1r6vVbJ435GsI/PuI2stUTNlOi/bPwCfehBZOse9Naf
7MpIs5/5BWPwRWqOy4ovCPI4Vo4RKrub
-----END PUBLIC KEY-----
";
        const SECP256K1: &str = "-----BEGIN PUBLIC KEY-----
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEDdDDzGHwAuKVBaeHhkx8+WEg3jf/oiXE
NRUsK6XGT7DEwHk4hVJJSwEcxOnldDE64saOt5rg2e9UYrfrIloEyg==
-----END PUBLIC KEY-----
";
        let dir = tempfile::tempdir().unwrap();
        for (name, pem) in [("p384", P384), ("secp256k1", SECP256K1)] {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            let cfg = AuthConfig { jwt_public_key: Some(path.display().to_string()), ..AuthConfig::default() };
            let e = Authenticator::new(&cfg, HashMap::new()).err().unwrap_or_else(|| panic!("{name} was taken"));
            assert!(e.contains("is not a PEM RSA, EC (P-256) or Ed25519 public key"), "{name}: {e}");
        }
    }

    #[test]
    fn user_id_is_used_when_sub_is_not_a_uuid() {
        let token = sign(serde_json::json!({"sub": "bob", "user_id": USER, "exp": now() + 60}), "s3cret");
        assert_eq!(auth().validate(&token).unwrap().user.to_string(), USER);
    }

    #[test]
    fn acl_allows_claimed_and_owned_servers_and_own_notifications() {
        let a = auth();
        let server = Uuid::parse_str(SERVER).unwrap();
        let user = Identity { user: Uuid::parse_str(USER).unwrap(), role: Role::User, servers: Box::default(), exp: 0 };
        let stranger = Identity { user: Uuid::new_v4(), ..user.clone() };
        assert!(a.may_subscribe(&user, &Channel::logs(server)));
        assert!(!a.may_subscribe(&stranger, &Channel::logs(server)));
        let claimed = Identity { servers: vec![server].into(), ..stranger.clone() };
        assert!(a.may_subscribe(&claimed, &Channel::status(server)));
        assert!(a.may_subscribe(&user, &Channel::notifications(user.user)));
        assert!(!a.may_subscribe(&stranger, &Channel::notifications(user.user)));
        let admin = Identity { role: Role::Admin, ..stranger };
        assert!(a.may_subscribe(&admin, &Channel::notifications(user.user)));
    }
}
