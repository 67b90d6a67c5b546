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

/// The order of P-256, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `a - b` on 32-byte big-endian numbers (`a >= b`).
fn sub256(a: &[u8; 32], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = (d + 256 * borrow) as u8;
    }
    out
}

/// `r || s` as an ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }`.
fn der(rs: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let x = &x[x.iter().position(|&b| b != 0).unwrap_or(31)..];
        let pad = x[0] & 0x80 != 0;
        [&[0x02, (x.len() + usize::from(pad)) as u8][..], if pad { &[0][..] } else { &[][..] }, x].concat()
    };
    let body = [int(&rs[..32]), int(&rs[32..])].concat();
    [vec![0x30, body.len() as u8], body].concat()
}

/// ES256 through `ring`: every malformed signature, every other algorithm
/// in the header (with or without the same signature) and every key the
/// token names itself (`jwk`, `jku`, `kid`) is `401` `invalid token`; a
/// high-S signature is the same signer's signature of the same claims
/// (RFC 7518 does not ask for low S, and OpenSSL-based signers make them),
/// so it is taken.
#[test]
fn es256_refuses_malformed_signatures_other_algorithms_and_keys_named_by_the_token() {
    let dir = temp_dir();
    let (private, public) = openssl_keypair(&dir, "ec", "ec");
    let (other, _) = openssl_keypair(&dir, "ec", "other");
    let hub = public_key_hub(&public);
    let c = claims(&new_id(), "admin", &[]);
    let good = sign_pem(&c, Algorithm::ES256, &private);
    let (message, sig) = good.rsplit_once('.').unwrap();
    let rs = b64url_decode(sig);
    assert_eq!(rs.len(), 64);
    let with_sig = |bytes: &[u8]| format!("{message}.{}", b64url(bytes));
    let (_, payload) = message.split_once('.').unwrap();
    let with_header = |header: &str, sig: &str| format!("{}.{payload}.{sig}", b64url(header.as_bytes()));
    let (r, s) = rs.split_at(32);
    let mut cases = vec![
        ("a truncated signature", with_sig(&rs[..63])),
        ("a byte too many", with_sig(&[&rs[..], &[0]].concat())),
        ("an empty signature", format!("{message}.")),
        ("the signature in DER", with_sig(&der(&rs))),
        ("r = 0", with_sig(&[&[0u8; 32][..], s].concat())),
        ("s = 0", with_sig(&[r, &[0u8; 32][..]].concat())),
        ("r = s = 0", with_sig(&[0u8; 64])),
        ("r = n", with_sig(&[&P256_N[..], s].concat())),
        ("s = n", with_sig(&[r, &P256_N[..]].concat())),
        ("a signature that is not base64url", format!("{message}.{}!", &sig[1..])),
        ("alg none with the signature", with_header(r#"{"alg":"none","typ":"JWT"}"#, sig)),
        ("alg none unsigned", unsigned_token(&c)),
        ("alg ES384 with the signature", with_header(r#"{"alg":"ES384","typ":"JWT"}"#, sig)),
        ("alg es256 in lower case", with_header(r#"{"alg":"es256","typ":"JWT"}"#, sig)),
        ("alg HS256 with the signature", with_header(r#"{"alg":"HS256","typ":"JWT"}"#, sig)),
    ];
    // HS256 keyed with the public key's PEM or its DER (algorithm confusion).
    let pem = std::fs::read_to_string(&public).unwrap();
    cases.push(("HS256 with the public PEM", sign_hs(&c, &pem, Algorithm::HS256)));
    let spki: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    cases.push(("HS256 with the public key's base64", sign_hs(&c, &spki, Algorithm::HS256)));
    // Another key, named by the token itself.
    let other_key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&other).unwrap()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&other_key, Algorithm::ES256).unwrap();
    for (what, header) in [
        ("its own jwk", jsonwebtoken::Header { jwk: Some(jwk), ..jsonwebtoken::Header::new(Algorithm::ES256) }),
        ("a jku", jsonwebtoken::Header { jku: Some("https://evil.example/k".into()), ..Default::default() }),
        ("a kid", jsonwebtoken::Header { kid: Some("../../other".into()), ..Default::default() }),
    ] {
        let header = jsonwebtoken::Header { alg: Algorithm::ES256, ..header };
        cases.push((what, jsonwebtoken::encode(&header, &c, &other_key).unwrap()));
    }
    for (what, token) in &cases {
        assert_invalid(&hub, token, what);
    }
    // High S: n - s with the same r.
    assert_accepted(&hub, &with_sig(&[r, &sub256(&P256_N, s)].concat()));
    // A kid on a good token changes nothing; the hub carries on.
    let kid = jsonwebtoken::Header { kid: Some("any".into()), ..jsonwebtoken::Header::new(Algorithm::ES256) };
    let own_key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&private).unwrap()).unwrap();
    assert_accepted(&hub, &jsonwebtoken::encode(&kid, &c, &own_key).unwrap());
}
