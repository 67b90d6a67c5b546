//! Real tokens, signed the way the panel's back end signs them: the load
//! generator's clients and publisher use them, and so do the hub's
//! integration tests (the hub's own `Authenticator::mint` is the only other
//! JWT signer in the tree). HS256 with a random secret, or ES256 with a
//! fresh P-256 key pair made by the `openssl` CLI (the hub gets the public
//! half as `auth.jwt_public_key`); any algorithm for the tests' keys.

use std::path::{Path, PathBuf};
use std::process::Command;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::hubproc::Keys;
use crate::Error;

/// Signs tokens with one key.
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
}

impl Signer {
    /// HMAC (`alg` one of HS256, HS384, HS512) with `secret`.
    ///
    /// # Errors
    /// An empty secret.
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Result<Signer, Error> {
        Ok(Signer { key: EncodingKey::from_secret(secret)?, alg })
    }

    /// A PEM private key read from `private_pem`: RSA for RS* and PS*, EC
    /// for ES256 and ES384, Ed25519 for EdDSA.
    ///
    /// # Errors
    /// The file cannot be read, `alg` takes no key pair, or the key does not fit `alg`.
    pub fn pem(alg: Algorithm, private_pem: &Path) -> Result<Signer, Error> {
        let pem = std::fs::read(private_pem).map_err(|e| format!("cannot read {}: {e}", private_pem.display()))?;
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem)?,
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem)?,
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
            other => return Err(format!("{other:?} takes no key pair").into()),
        };
        Ok(Signer { key, alg })
    }

    /// A signed token carrying `claims`.
    ///
    /// # Errors
    /// Signing fails.
    pub fn sign(&self, claims: &Value) -> Result<String, Error> {
        Ok(jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key)?)
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
        self.sign(&claims)
    }
}

/// HS256 with a random secret, and the hub's side of it.
///
/// # Errors
/// Never in practice (the secret is not empty).
pub fn hs256() -> Result<(Signer, Keys), Error> {
    let secret = format!("bench-{}", Uuid::new_v4().simple());
    Ok((Signer::hmac(secret.as_bytes(), Algorithm::HS256)?, Keys::Secret(secret)))
}

/// ES256 with a new P-256 key pair written into `dir`, and the hub's side of it.
///
/// # Errors
/// `openssl` is missing or fails, or the key cannot be read.
pub fn es256(dir: &Path) -> Result<(Signer, Keys), Error> {
    let (private, public) = openssl_keypair(dir, "ec", "es256")?;
    Ok((Signer::pem(Algorithm::ES256, &private)?, Keys::PublicKey(public)))
}

/// Makes a key pair with the `openssl` CLI in `dir`: `kind` is `rsa`
/// (2048 bits), `ec` (P-256) or `ed25519`. Returns the paths of the
/// private and the public PEM (`NAME.pem`, `NAME.pub.pem`).
///
/// # Errors
/// An unknown kind, or `openssl` is missing or fails.
pub fn openssl_keypair(dir: &Path, kind: &str, name: &str) -> Result<(PathBuf, PathBuf), Error> {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let (private_s, public_s) = (private.display().to_string(), public.display().to_string());
    let algorithm: &[&str] = match kind {
        "rsa" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "ec" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ed25519" => &["-algorithm", "ED25519"],
        other => return Err(format!("unknown key kind {other}").into()),
    };
    openssl(&[&["genpkey"], algorithm, &["-out", &private_s]].concat())?;
    openssl(&["pkey", "-in", &private_s, "-pubout", "-out", &public_s])?;
    Ok((private, public))
}

fn openssl(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run openssl (needed for key pairs): {e}"))?;
    if !out.status.success() {
        return Err(
            format!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()).into()
        );
    }
    Ok(())
}
