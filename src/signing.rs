//! Webhook signing keys and Standard Webhooks signatures over `"{id}.{timestamp}.{body}"`:
//! `v1,<base64 HMAC-SHA256>` with a shared `whsec_` secret ([`SigningKey`]), and
//! `v1a,<base64 ed25519>` with a `whsk_` private key ([`Ed25519Key`]) whose public half
//! (`whpk_`) receivers hold. During key rotation the header carries one signature per key,
//! space-separated.
//!
//! Below both `config` (which parses and checks the keys) and `delivery` (which signs):
//! this module imports nothing else of the crate.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, Verifier as _};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The shell command that makes a fresh `whsec_` secret (what `loopwatch init` does in
/// Rust), named by the errors about a bad one.
pub const MAKE_SECRET: &str = r#"`echo "whsec_$(head -c 32 /dev/urandom | base64)"`"#;

/// Why a key was refused. The messages describe the problem, never the key, and read
/// after "the secret (...)" in a config problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "is not a whsec_ secret (expected whsec_ followed by base64); make one with {MAKE_SECRET}"
    )]
    NotWhsec,
    #[error(
        "is not a whsk_ key (expected whsk_ followed by base64 of the 32-byte ed25519 seed and the 32-byte public key)"
    )]
    NotWhsk,
    #[error("is not valid base64 after {prefix}")]
    NotBase64 { prefix: &'static str },
    #[error("decodes to {0} bytes; use 24 to 64 random bytes: make one with {MAKE_SECRET}")]
    SecretLength(usize),
    #[error(
        "decodes to {0} bytes; a whsk_ key is 64 bytes (32-byte seed, then 32-byte public key)"
    )]
    KeyPairLength(usize),
    #[error("has a public half that does not match its seed; regenerate the key pair")]
    MismatchedPair,
}

/// A Standard Webhooks signing key (the bytes after `whsec_`), redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Parse `whsec_<base64>` of 24 to 64 bytes.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let b64 = s.strip_prefix("whsec_").ok_or(KeyError::NotWhsec)?;
        let bytes = B64
            .decode(b64)
            .map_err(|_| KeyError::NotBase64 { prefix: "whsec_" })?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(KeyError::SecretLength(bytes.len()));
        }
        Ok(SigningKey(bytes))
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The signed content of Standard Webhooks.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(msg_id.len() + body.len() + 24);
    m.extend_from_slice(msg_id.as_bytes());
    m.push(b'.');
    m.extend_from_slice(timestamp.to_string().as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

/// One `v1,` signature.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&signed_content(msg_id, timestamp, body));
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// A Standard Webhooks asymmetric signing key: `whsk_` + base64 of the 32-byte ed25519
/// seed followed by its 32-byte public key. `Debug` prints `[redacted]`. Boxed: the
/// expanded key is large and sits in every sink's config.
#[derive(Clone)]
pub struct Ed25519Key(Box<ed25519_dalek::SigningKey>);

impl Ed25519Key {
    /// Parse `whsk_<base64 of 64 bytes>`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let b64 = s.strip_prefix("whsk_").ok_or(KeyError::NotWhsk)?;
        let bytes = B64
            .decode(b64)
            .map_err(|_| KeyError::NotBase64 { prefix: "whsk_" })?;
        let pair = <[u8; 64]>::try_from(bytes.as_slice())
            .map_err(|_| KeyError::KeyPairLength(bytes.len()))?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
            .map_err(|_| KeyError::MismatchedPair)?;
        Ok(Ed25519Key(Box::new(key)))
    }

    /// The `whpk_` public key to give receivers.
    pub fn public_key(&self) -> String {
        format!("whpk_{}", B64.encode(self.0.verifying_key().as_bytes()))
    }

    /// One `v1a,` signature.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let sig = self.0.sign(&signed_content(msg_id, timestamp, body));
        format!("v1a,{}", B64.encode(sig.to_bytes()))
    }
}

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The `webhook-signature` header value: a `v1` signature per HMAC key (current, then
/// previous while rotating) and a `v1a` one when an ed25519 key is set. `None` when the
/// sink has no key at all (unsigned).
pub fn signature_header(
    keys: &[&SigningKey],
    ed25519: Option<&Ed25519Key>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<String> {
    let sigs: Vec<String> = keys
        .iter()
        .map(|k| sign(k.bytes(), msg_id, timestamp, body))
        .chain(ed25519.map(|k| k.sign(msg_id, timestamp, body)))
        .collect();
    (!sigs.is_empty()).then(|| sigs.join(" "))
}

/// Verify a header against one key (what a receiver does); used by the demo receiver.
/// Each `v1,` signature is checked by the MAC's own `verify_slice`, in constant time.
pub fn verify(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let content = signed_content(msg_id, timestamp, body);
    header.split_whitespace().any(|s| {
        s.strip_prefix("v1,")
            .and_then(|b| B64.decode(b).ok())
            .is_some_and(|sig| {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
                mac.update(&content);
                mac.verify_slice(&sig).is_ok()
            })
    })
}

/// Verify the `v1a` signatures of a header against a `whpk_` public key.
pub fn verify_v1a(
    public_key: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let Some(pk) = public_key
        .strip_prefix("whpk_")
        .and_then(|b| B64.decode(b).ok())
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
    else {
        return false;
    };
    let content = signed_content(msg_id, timestamp, body);
    header.split_whitespace().any(|s| {
        s.strip_prefix("v1a,")
            .and_then(|b| B64.decode(b).ok())
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .is_some_and(|sig| pk.verify(&content, &sig).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/data/standard-webhooks-vectors.json")).unwrap()
    }

    #[test]
    fn standard_webhooks_vectors() {
        let v = vectors();
        let vectors = v["vectors"].as_array().unwrap();
        assert!(!vectors.is_empty());
        for vec in vectors {
            let key = SigningKey::parse(vec["secret"].as_str().unwrap()).unwrap();
            let id = vec["msg_id"].as_str().unwrap();
            let ts = vec["timestamp"].as_i64().unwrap();
            let body = vec["body"].as_str().unwrap().as_bytes();
            let expected = vec["signature"].as_str().unwrap();
            assert_eq!(sign(key.bytes(), id, ts, body), expected);
            assert!(verify(&key, id, ts, body, &format!("v1,bogus {expected}")));
            assert!(!verify(&key, id, ts + 1, body, expected));
        }
    }

    #[test]
    fn standard_webhooks_v1a_vectors() {
        let v = vectors();
        let vectors = v["v1a_vectors"].as_array().unwrap();
        assert!(!vectors.is_empty());
        for vec in vectors {
            let key = Ed25519Key::parse(vec["secret_key"].as_str().unwrap()).unwrap();
            let public = vec["public_key"].as_str().unwrap();
            assert_eq!(key.public_key(), public);
            let id = vec["msg_id"].as_str().unwrap();
            let ts = vec["timestamp"].as_i64().unwrap();
            let body = vec["body"].as_str().unwrap().as_bytes();
            let expected = vec["signature"].as_str().unwrap();
            // ed25519 is deterministic: the exact published signature.
            assert_eq!(key.sign(id, ts, body), expected);
            assert!(verify_v1a(
                public,
                id,
                ts,
                body,
                &format!("v1,abc {expected}")
            ));
            assert!(!verify_v1a(public, id, ts + 1, body, expected));
            assert!(!verify_v1a(public, id, ts, b"{\"test\": 1}", expected));
        }
    }

    #[test]
    fn ed25519_keys_are_checked_and_never_echoed() {
        let good = vectors()["v1a_vectors"][0]["secret_key"]
            .as_str()
            .unwrap()
            .to_string();
        let b64 = good.strip_prefix("whsk_").unwrap();
        let raw = B64.decode(b64).unwrap();
        let mut mismatched = raw.clone();
        mismatched[40] ^= 1;
        let cases = [
            (format!("whsec_{b64}"), "not a whsk_ key"),
            ("whsk_!!not base64!!".to_string(), "not valid base64"),
            (
                format!("whsk_{}", B64.encode(&raw[..32])),
                "decodes to 32 bytes",
            ),
            (
                format!("whsk_{}", B64.encode(&mismatched)),
                "does not match its seed",
            ),
        ];
        for (input, needle) in cases {
            let e = Ed25519Key::parse(&input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
            assert!(!e.contains(b64) && !e.contains(&b64[..12]), "{e}");
        }
        let key = Ed25519Key::parse(&good).unwrap();
        assert_eq!(format!("{key:?}"), "[redacted]");
    }

    #[test]
    fn header_carries_every_signature_and_none_when_unsigned() {
        let a = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let v = vectors();
        let ed = Ed25519Key::parse(v["v1a_vectors"][0]["secret_key"].as_str().unwrap()).unwrap();
        let h = signature_header(&[&a, &b], Some(&ed), "msg", 1, b"{}").unwrap();
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[0].starts_with("v1,") && parts[2].starts_with("v1a,"));
        assert!(verify(&a, "msg", 1, b"{}", &h) && verify(&b, "msg", 1, b"{}", &h));
        assert!(verify_v1a(&ed.public_key(), "msg", 1, b"{}", &h));
        let only_ed = signature_header(&[], Some(&ed), "msg", 1, b"{}").unwrap();
        assert!(only_ed.starts_with("v1a,") && !only_ed.contains(' '));
        assert_eq!(signature_header(&[], None, "msg", 1, b"{}"), None);
    }

    /// `verify` compares through the MAC's `verify_slice`: a signature cut short, one bit
    /// off, without its `v1,` label or of another key is refused; the right one anywhere
    /// in the header verifies.
    #[test]
    fn verify_refuses_altered_signatures() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let other = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let good = sign(key.bytes(), "msg", 1, b"{}");
        let raw = B64.decode(good.strip_prefix("v1,").unwrap()).unwrap();
        let mut flipped = raw.clone();
        flipped[31] ^= 1;
        for bad in [
            format!("v1,{}", B64.encode(&raw[..16])),
            format!("v1,{}", B64.encode(&flipped)),
            B64.encode(&raw),
            format!("v1a,{}", B64.encode(&raw)),
            sign(other.bytes(), "msg", 1, b"{}"),
            String::new(),
        ] {
            assert!(!verify(&key, "msg", 1, b"{}", &bad), "{bad:?} verified");
        }
        assert!(verify(&key, "msg", 1, b"{}", &format!("v1,AAAA {good}")));
    }

    #[test]
    fn signing_key_bounds() {
        assert!(SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(SigningKey::parse("whsec_AAAA").is_err());
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    }
}
