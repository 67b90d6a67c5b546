//! PROTOCOL.md section 1, "Keys": `auth.jwt_public_key` accepts exactly the
//! one algorithm of its key type (RSA: RS256, P-256: ES256, Ed25519: EdDSA).
//! Key pairs are made with the `openssl` CLI at test time.

use std::path::Path;

use jsonwebtoken::Algorithm;

use crate::support::*;

fn public_key_hub(public: &Path) -> Hub {
    HubConfig { secret: None, ..HubConfig::new() }.auth(&format!("jwt_public_key = \"{}\"", public.display())).start()
}

fn assert_accepted(hub: &Hub, token: &str) {
    let mut client = hub.connect(token);
    client.ping_pong();
}

fn assert_invalid(hub: &Hub, token: &str, what: &str) {
    let resp = raw_http(hub.addr, upgrade_request(&ws_path(token), &[]).as_bytes());
    assert_eq!(resp.status, 401, "{what}: expected 401, got {} {}", resp.status, resp.text());
    assert_http_error(&resp, 401, "unauthorized", Some("invalid token"));
}

#[test]
fn rsa_public_key_accepts_rs256_only() {
    let dir = temp_dir();
    let (private, public) = openssl_keypair(&dir, "rsa", "rsa");
    let (other, _) = openssl_keypair(&dir, "rsa", "other");
    let hub = public_key_hub(&public);
    let c = claims(&new_id(), "admin", &[]);
    assert_accepted(&hub, &sign_pem(&c, Algorithm::RS256, &private));
    assert_invalid(&hub, &sign_pem(&c, Algorithm::RS384, &private), "RS384");
    assert_invalid(&hub, &sign_pem(&c, Algorithm::PS256, &private), "PS256");
    assert_invalid(&hub, &sign_pem(&c, Algorithm::RS256, &other), "RS256 by another key");
    // HS256 keyed with the public key's PEM (algorithm confusion).
    let pem = std::fs::read_to_string(&public).unwrap();
    assert_invalid(&hub, &sign_hs(&c, &pem, Algorithm::HS256), "HS256 with the public PEM");
    assert_invalid(&hub, &sign(&c), "HS256");
    assert_invalid(&hub, &unsigned_token(&c), "alg none");
}

#[test]
fn p256_public_key_accepts_es256_only() {
    let dir = temp_dir();
    let (private, public) = openssl_keypair(&dir, "ec", "ec");
    let (other, _) = openssl_keypair(&dir, "ec", "other");
    let (ed, _) = openssl_keypair(&dir, "ed25519", "ed");
    let hub = public_key_hub(&public);
    let c = claims(&new_id(), "admin", &[]);
    assert_accepted(&hub, &sign_pem(&c, Algorithm::ES256, &private));
    assert_invalid(&hub, &sign_pem(&c, Algorithm::ES256, &other), "ES256 by another key");
    assert_invalid(&hub, &sign_pem(&c, Algorithm::EdDSA, &ed), "EdDSA");
    assert_invalid(&hub, &sign(&c), "HS256");
}

#[test]
fn ed25519_public_key_accepts_eddsa_only() {
    let dir = temp_dir();
    let (private, public) = openssl_keypair(&dir, "ed25519", "ed");
    let (other, _) = openssl_keypair(&dir, "ed25519", "other");
    let (ec, _) = openssl_keypair(&dir, "ec", "ec");
    let hub = public_key_hub(&public);
    let c = claims(&new_id(), "admin", &[]);
    assert_accepted(&hub, &sign_pem(&c, Algorithm::EdDSA, &private));
    assert_invalid(&hub, &sign_pem(&c, Algorithm::EdDSA, &other), "EdDSA by another key");
    assert_invalid(&hub, &sign_pem(&c, Algorithm::ES256, &ec), "ES256");
    assert_invalid(&hub, &sign(&c), "HS256");
}
