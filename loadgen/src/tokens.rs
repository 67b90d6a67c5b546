//! Real tokens for the clients and the publisher: HS256 with a random
//! secret, or ES256 with a fresh P-256 key pair made by the `openssl` CLI
//! (the hub gets the public half as `auth.jwt_public_key`).

use std::path::Path;
use std::process::Command;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

use crate::hubproc::Keys;
use crate::Error;

/// Signs tokens with one key.
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    /// What the hub must be configured with to accept them.
    pub keys: Keys,
}

impl Signer {
    /// HS256 with a random secret.
    ///
    /// # Errors
    /// Never in practice (the secret is not empty).
    pub fn hs256() -> Result<Signer, Error> {
        let secret = format!("bench-{}", Uuid::new_v4().simple());
        let key = EncodingKey::from_secret(secret.as_bytes())?;
        Ok(Signer { key, alg: Algorithm::HS256, keys: Keys::Secret(secret) })
    }

    /// ES256 with a new P-256 key pair written into `dir`.
    ///
    /// # Errors
    /// `openssl` is missing or fails, or the key cannot be read.
    pub fn es256(dir: &Path) -> Result<Signer, Error> {
        let private = dir.join("es256.pem");
        let public = dir.join("es256.pub.pem");
        let (private_s, public_s) = (private.display().to_string(), public.display().to_string());
        openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &private_s])?;
        openssl(&["pkey", "-in", &private_s, "-pubout", "-out", &public_s])?;
        let pem = std::fs::read(&private).map_err(|e| format!("cannot read {private_s}: {e}"))?;
        let key = EncodingKey::from_ec_pem(&pem)?;
        Ok(Signer { key, alg: Algorithm::ES256, keys: Keys::PublicKey(public) })
    }

    /// A token for `sub` with `role` (`user`, `service`, `admin`) allowed to
    /// watch `servers`, valid for two hours.
    ///
    /// # Errors
    /// Signing fails.
    pub fn token(&self, sub: Uuid, role: &str, servers: &[Uuid]) -> Result<String, Error> {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({ "sub": sub, "iat": now, "exp": now + 7200, "username": "bench" });
        if role != "user" {
            claims["role"] = json!(role);
        }
        if !servers.is_empty() {
            claims["servers"] = json!(servers);
        }
        Ok(jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)?)
    }
}

fn openssl(args: &[&str]) -> Result<(), Error> {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .map_err(|e| format!("cannot run openssl (needed for ES256 keys): {e}"))?;
    if !status.success() {
        return Err(format!("openssl {} failed", args.join(" ")).into());
    }
    Ok(())
}
