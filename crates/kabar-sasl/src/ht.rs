//! HT-* "hashed token" mechanisms used by XEP-0484 FAST (draft-schmaus-kitten-sasl-ht): the client
//! proves it holds a server-issued token with `HMAC-SHA-256(token, "Initiator" || cb-data)`; the
//! server answers with `HMAC-SHA-256(token, "Responder" || cb-data)`.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{ChannelBindingType, ChannelBindings, SaslError};

/// The channel binding an HT mechanism uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HtMechanism {
    /// `HT-SHA-256-NONE`
    None,
    /// `HT-SHA-256-EXPR` (tls-exporter)
    Exporter,
    /// `HT-SHA-256-ENDP` (tls-server-end-point)
    EndPoint,
}

impl HtMechanism {
    pub const ALL: [HtMechanism; 3] = [HtMechanism::Exporter, HtMechanism::EndPoint, HtMechanism::None];

    pub fn name(self) -> &'static str {
        match self {
            HtMechanism::None => "HT-SHA-256-NONE",
            HtMechanism::Exporter => "HT-SHA-256-EXPR",
            HtMechanism::EndPoint => "HT-SHA-256-ENDP",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The binding data this mechanism hashes in; `None` when the connection cannot provide it.
    pub fn binding_data<'a>(self, cb: &'a ChannelBindings) -> Option<&'a [u8]> {
        match self {
            HtMechanism::None => Some(&[]),
            HtMechanism::Exporter => cb.get(ChannelBindingType::TlsExporter),
            HtMechanism::EndPoint => cb.get(ChannelBindingType::TlsServerEndPoint),
        }
    }
}

/// Splits an HT initial response into (authcid, initiator proof).
pub fn parse_ht(msg: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
    let nul = msg.iter().position(|b| *b == 0).ok_or(SaslError::MalformedRequest)?;
    let (user, proof) = (&msg[..nul], &msg[nul + 1..]);
    let user = std::str::from_utf8(user).map_err(|_| SaslError::MalformedRequest)?;
    if user.is_empty() || proof.len() != 32 {
        return Err(SaslError::MalformedRequest);
    }
    Ok((user.to_owned(), proof.to_vec()))
}

fn hmac(token: &[u8], label: &[u8], cb: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(token) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(label);
    mac.update(cb);
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time check of the client's proof.
pub fn verify_ht(token: &[u8], cb: &[u8], proof: &[u8]) -> bool {
    let expected = hmac(token, b"Initiator", cb);
    !expected.is_empty() && bool::from(expected.ct_eq(proof))
}

/// The server's additional data on success.
pub fn ht_server_final(token: &[u8], cb: &[u8]) -> Vec<u8> {
    hmac(token, b"Responder", cb)
}

/// A fresh random token (32 bytes, URL-safe base64 without padding).
pub fn new_token() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep0484_ht_proof_round_trip_and_wrong_token_fails() {
        let token = b"secret-token";
        let proof = hmac(token, b"Initiator", b"");
        let mut msg = b"alice".to_vec();
        msg.push(0);
        msg.extend_from_slice(&proof);
        let (user, p) = parse_ht(&msg).expect("parses");
        assert_eq!(user, "alice");
        assert!(verify_ht(token, b"", &p));
        assert!(!verify_ht(b"other", b"", &p));
        assert!(!verify_ht(token, b"cb", &p), "binding data is part of the proof");
        assert_ne!(ht_server_final(token, b""), proof);
    }

    #[test]
    fn xep0484_malformed_ht_messages_are_refused() {
        assert!(parse_ht(b"no-nul").is_err());
        assert!(parse_ht(b"\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(parse_ht(b"alice\0short").is_err());
        assert!(parse_ht(&[0xff, 0, 1]).is_err());
    }

    #[test]
    fn xep0484_mechanism_names_round_trip() {
        for m in HtMechanism::ALL {
            assert_eq!(HtMechanism::from_name(m.name()), Some(m));
        }
        let cb = ChannelBindings::default();
        assert_eq!(HtMechanism::None.binding_data(&cb), Some(&[][..]));
        assert_eq!(HtMechanism::Exporter.binding_data(&cb), None);
    }
}
