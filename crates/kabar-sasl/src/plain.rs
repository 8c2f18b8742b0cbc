//! PLAIN (RFC 4616), checked against stored SCRAM keys.

use subtle::ConstantTimeEq;

use crate::{
    fake_credentials, keys_from_prepped, saslprep_nonempty, SaslError, ScramCredentials, ScramHash,
};

/// A parsed PLAIN message: `[authzid] NUL authcid NUL passwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainMessage {
    /// Requested authorization identity (`None` when empty). Not prepped:
    /// it is a JID and the caller must validate it.
    pub authzid: Option<String>,
    /// Authentication identity, SASLprepped.
    pub authcid: String,
    /// Password, SASLprepped.
    pub password: String,
}

impl std::fmt::Debug for PlainMessage {
    // Hand-written so the password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainMessage")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses a PLAIN message (RFC 4616 §2): exactly two NUL separators, UTF-8,
/// non-empty authcid and password (after SASLprep). Any violation is
/// [`SaslError::MalformedRequest`].
pub fn parse_plain(msg: &[u8]) -> Result<PlainMessage, SaslError> {
    let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
    let mut parts = msg.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedRequest);
    };
    Ok(PlainMessage {
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
        authcid: saslprep_nonempty(authcid)?,
        password: saslprep_nonempty(password)?,
    })
}

/// Checks `password` against stored SCRAM credentials by recomputing
/// StoredKey with their salt and iteration count (constant-time compare).
///
/// With `creds == None` (unknown user) the same PBKDF2 work is done on fake
/// credentials before returning `false`, so timing does not reveal whether
/// the user exists. The password is SASLprepped (idempotent on
/// [`parse_plain`] output) to match [`derive_credentials`].
///
/// [`derive_credentials`]: crate::derive_credentials
pub fn verify_plain(password: &str, creds: Option<&ScramCredentials>, hash: ScramHash) -> bool {
    let fake;
    let (creds, known_user) = match creds {
        Some(c) => (c, true),
        None => {
            fake = fake_credentials(hash, "");
            (&fake, false)
        }
    };
    let prepped = saslprep_nonempty(password);
    // On a prep failure still hash the raw bytes: equal work, result ignored.
    let bytes = prepped.as_deref().unwrap_or(password).as_bytes();
    let computed = keys_from_prepped(hash, bytes, &creds.salt, creds.iterations);
    let matches = bool::from(computed.stored_key.ct_eq(&creds.stored_key));
    // Fake keys come from no password, but never let them authenticate.
    matches && prepped.is_ok() && known_user
}
