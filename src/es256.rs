//! A faster ES256 check for jsonwebtoken (issue 11, part 3).
//!
//! jsonwebtoken's pure-Rust backend verifies a P-256 signature in about
//! 280 µs on the bench machine, the whole cost of an ES256 handshake.
//! `ring` does it with its assembly P-256 code in a fraction of that. This
//! module is a [`CryptoProvider`] that is jsonwebtoken's `rust_crypto`
//! provider with one change: ES256 signatures are checked by `ring`.
//! Everything else (HS*, RS*, PS*, ES384, EdDSA, signing, JWK helpers) is
//! the `rust_crypto` code unchanged.
//!
//! Why not jsonwebtoken's `aws_lc_rs` backend: building `aws-lc-sys` turns
//! on the `parallel` feature of the `cc` crate, which changes the build
//! script of `grpcio-sys` and so rebuilds gRPC's C core (10-30 minutes on
//! two cores, in every target directory and profile). `ring` builds its C
//! and assembly with `cc` as it is.
//!
//! The provider is process-wide: [`install`] puts it in place before the
//! first token is checked (jsonwebtoken keeps the first provider it is
//! given). Should something else have been installed first, tokens are still
//! checked correctly, only by the slower code.

use std::sync::LazyLock;

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

/// jsonwebtoken's `rust_crypto` provider with ES256 checked by `ring`.
static PROVIDER: LazyLock<CryptoProvider> =
    LazyLock::new(|| CryptoProvider { verifier_factory: verifier, ..rust_crypto::DEFAULT_PROVIDER.clone() });

/// Makes [`PROVIDER`] jsonwebtoken's provider for this process, unless one
/// is already in place. Returns whether ours is the one in use.
pub fn install() -> bool {
    let ours: &'static CryptoProvider = &PROVIDER;
    let _ = ours.install_default();
    CryptoProvider::try_get_default().is_some_and(|p| std::ptr::eq(p, ours))
}

/// Whether `key` is a point on P-256, the one curve of ES256. jsonwebtoken
/// reads an EC public key of any curve, and [`Es256`] would then refuse
/// every token; this asks the `rust_crypto` verifier, which parses the
/// point on P-256 (once, at start-up).
pub fn is_p256(key: &DecodingKey) -> bool {
    (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&Algorithm::ES256, key).is_ok()
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match alg {
        Algorithm::ES256 => Ok(Box::new(Es256::new(key)?)),
        _ => (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    }
}

/// An ES256 verifier: the key's uncompressed SEC1 point.
struct Es256(Box<[u8]>);

impl Es256 {
    fn new(key: &DecodingKey) -> Result<Es256, Error> {
        if key.family() != AlgorithmFamily::Ec {
            return Err(ErrorKind::InvalidKeyFormat.into());
        }
        Ok(Es256(key.try_get_as_bytes()?.into()))
    }
}

impl Verifier<Vec<u8>> for Es256 {
    /// `signature` is the JWS form: `r || s`, 32 bytes each.
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(msg, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Es256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// A P-256 key pair made with `openssl genpkey`: ring's signing half
    /// and jsonwebtoken's decoding key of the public half.
    fn keys() -> (EcdsaKeyPair, DecodingKey) {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = aymc_loadgen::tokens::openssl_keypair(dir.path(), "ec", "k").unwrap();
        let der = EncodingKey::from_ec_pem(&std::fs::read(private).unwrap()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_bytes(), &SystemRandom::new());
        (pair.unwrap(), DecodingKey::from_ec_pem(&std::fs::read(public).unwrap()).unwrap())
    }

    #[test]
    fn the_es256_verifier_takes_good_signatures_and_refuses_forgeries() {
        let (pair, key) = keys();
        let (other, _) = keys();
        let rng = SystemRandom::new();
        let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";
        let sig = pair.sign(&rng, msg).unwrap().as_ref().to_vec();
        let v = (PROVIDER.verifier_factory)(&Algorithm::ES256, &key).unwrap();
        assert_eq!(v.algorithm(), Algorithm::ES256);
        assert!(v.verify(msg, &sig).is_ok());
        let mut flipped = sig.clone();
        flipped[10] ^= 1;
        let forged = other.sign(&rng, msg).unwrap().as_ref().to_vec();
        for (what, m, s) in [
            ("a flipped bit", &msg[..], flipped),
            ("another key's signature", &msg[..], forged),
            ("another message", &b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ5In0"[..], sig.clone()),
            ("a DER signature", &msg[..], [&[0x30u8, 0x44][..], &sig].concat()),
            ("nothing", &msg[..], Vec::new()),
        ] {
            assert!(v.verify(m, &s).is_err(), "{what} was accepted");
        }
        // An HMAC key is no ES256 key.
        let secret = DecodingKey::from_secret(b"s3cret").unwrap();
        assert!((PROVIDER.verifier_factory)(&Algorithm::ES256, &secret).is_err());
    }
}
