//! SCRAM server state machine (RFC 5802 §5, §7; RFC 7677).

use std::mem;

use subtle::{Choice, ConstantTimeEq};

use crate::{
    b64_decode, b64_encode, fake_credentials, saslprep_nonempty, ChannelBindingType,
    ChannelBindings, Mechanism, SaslError, ScramCredentials, ScramHash,
};

/// Random bytes in the server nonce part (RFC 5802 wants it unpredictable;
/// 24 bytes = 192 bits, comfortably above the 18 bytes we promise).
const SERVER_NONCE_BYTES: usize = 24;

/// What the server learnt from the client-first-message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// Authentication identity: `n=` unescaped (`=2C`, `=3D`) and SASLprepped.
    pub username: String,
    /// Authorization identity from the GS2 header (`a=`, unescaped), if any.
    /// Not prepped: it is a JID and the caller must validate it.
    pub authzid: Option<String>,
}

/// Where the exchange stands. Every step takes the state out and leaves
/// `Done` behind, so any error (or out-of-order call) ends the exchange.
enum State {
    Start,
    GotClientFirst {
        /// Raw GS2 header, including the trailing comma.
        gs2_header: String,
        /// Channel-binding data committed to by the `p=` flag (empty otherwise).
        cb_data: Vec<u8>,
        client_first_bare: String,
        client_nonce: String,
    },
    SentServerFirst {
        /// Decoded `c=` we must see: gs2-header || cb-data.
        expected_cbind: Vec<u8>,
        nonce: String,
        /// `client-first-message-bare "," server-first-message`.
        auth_message_prefix: String,
        creds: ScramCredentials,
        known_user: bool,
    },
    Done,
}

/// Server side of one SCRAM exchange.
///
/// Usage: [`client_first`](Self::client_first) → look the user up →
/// [`server_first`](Self::server_first) → [`client_final`](Self::client_final).
/// Single use: after any error or success, all further calls fail.
pub struct ScramServer {
    mechanism: Mechanism,
    hash: ScramHash,
    bindings: ChannelBindings,
    plus_advertised: bool,
    username: Option<String>,
    authzid: Option<String>,
    cb_type: Option<ChannelBindingType>,
    state: State,
    #[cfg(test)]
    fixed_nonce: Option<String>,
}

impl std::fmt::Debug for ScramServer {
    // Hand-written so keys and nonces never end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("authzid", &self.authzid)
            .field("cb_type", &self.cb_type)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange for a SCRAM `mechanism` the client selected.
    ///
    /// `channel_bindings` is the data of the current connection;
    /// `plus_advertised` says whether this server offered any `-PLUS`
    /// mechanism in this stream (needed to detect downgrades, RFC 5802 §6).
    ///
    /// Fails with [`SaslError::InvalidMechanism`] for PLAIN, or for a `-PLUS`
    /// mechanism when no channel-binding data is available (it cannot have
    /// been offered).
    pub fn new(
        mechanism: Mechanism,
        channel_bindings: &ChannelBindings,
        plus_advertised: bool,
    ) -> Result<Self, SaslError> {
        let hash = mechanism.hash().ok_or(SaslError::InvalidMechanism)?;
        if mechanism.is_plus() && channel_bindings.available().is_empty() {
            return Err(SaslError::InvalidMechanism);
        }
        Ok(ScramServer {
            mechanism,
            hash,
            bindings: channel_bindings.clone(),
            plus_advertised,
            username: None,
            authzid: None,
            cb_type: None,
            state: State::Start,
            #[cfg(test)]
            fixed_nonce: None,
        })
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The prepared username, once the client-first-message was accepted.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The requested authorization identity, if the client sent one.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// The channel-binding type in use (`-PLUS` mechanisms only).
    pub fn channel_binding(&self) -> Option<ChannelBindingType> {
        self.cb_type
    }

    /// Test hook: use `nonce` as the server nonce part (RFC test vectors).
    #[cfg(test)]
    pub(crate) fn set_server_nonce(&mut self, nonce: &str) {
        self.fixed_nonce = Some(nonce.to_owned());
    }

    /// Parses `gs2-header client-first-message-bare` (RFC 5802 §7) and
    /// enforces the GS2 channel-binding rules (RFC 5802 §6).
    pub fn client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        let State::Start = mem::replace(&mut self.state, State::Done) else {
            return Err(SaslError::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let mut parts = msg.splitn(3, ',');
        let (Some(flag), Some(authz), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslError::MalformedRequest);
        };
        let binding = self.check_cbind_flag(flag)?;
        let authzid = match authz {
            "" => None,
            a => Some(unescape_saslname(
                a.strip_prefix("a=").ok_or(SaslError::MalformedRequest)?,
            )?),
        };

        let mut attrs = bare.split(',');
        // A leading "m=" (reserved-mext) fails here too: it is not "n=".
        let user = next_attr(&mut attrs, "n=")?;
        let client_nonce = next_attr(&mut attrs, "r=")?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(SaslError::MalformedRequest);
        }
        attrs.try_for_each(check_extension)?;
        let username = saslprep_nonempty(&unescape_saslname(user)?)?;

        let (cb_type, cb_data) = match binding {
            Some((t, data)) => (Some(t), data),
            None => (None, Vec::new()),
        };
        self.state = State::GotClientFirst {
            gs2_header: format!("{flag},{authz},"),
            cb_data,
            client_first_bare: bare.to_owned(),
            client_nonce: client_nonce.to_owned(),
        };
        self.username = Some(username.clone());
        self.authzid = authzid.clone();
        self.cb_type = cb_type;
        Ok(ClientFirst { username, authzid })
    }

    /// GS2 `gs2-cbind-flag` rules (RFC 5802 §6); returns the binding type
    /// and its data for `p=`.
    fn check_cbind_flag(
        &self,
        flag: &str,
    ) -> Result<Option<(ChannelBindingType, Vec<u8>)>, SaslError> {
        match (flag, self.mechanism.is_plus()) {
            ("n", false) => Ok(None),
            // "y": the client could bind but believes we cannot. If we did
            // offer -PLUS, someone stripped it from the list: a downgrade.
            ("y", false) if self.plus_advertised => Err(SaslError::NotAuthorized),
            ("y", false) => Ok(None),
            (_, true) => {
                let name = flag.strip_prefix("p=").ok_or(SaslError::MalformedRequest)?;
                let ty = ChannelBindingType::from_name(name).ok_or(SaslError::MalformedRequest)?;
                let data = self.bindings.get(ty).ok_or(SaslError::MalformedRequest)?;
                Ok(Some((ty, data.to_vec())))
            }
            // "p=" with a non-PLUS mechanism, or garbage.
            _ => Err(SaslError::MalformedRequest),
        }
    }

    /// Produces the server-first-message `r=…,s=…,i=…` (RFC 5802 §7).
    ///
    /// Pass `None` for an unknown user: the answer then uses a salt derived
    /// from the username and a per-process secret plus [`DEFAULT_ITERATIONS`],
    /// and [`client_final`](Self::client_final) fails with
    /// [`SaslError::NotAuthorized`] just as for a wrong password. For full
    /// indistinguishability real credentials should also use a 16-byte salt
    /// and [`DEFAULT_ITERATIONS`].
    ///
    /// [`DEFAULT_ITERATIONS`]: crate::DEFAULT_ITERATIONS
    pub fn server_first(&mut self, creds: Option<&ScramCredentials>) -> Result<Vec<u8>, SaslError> {
        let State::GotClientFirst {
            gs2_header,
            cb_data,
            client_first_bare,
            client_nonce,
        } = mem::replace(&mut self.state, State::Done)
        else {
            return Err(SaslError::MalformedRequest);
        };
        let (creds, known_user) = match creds {
            Some(c) => (c.clone(), true),
            None => (
                fake_credentials(self.hash, self.username.as_deref().unwrap_or("")),
                false,
            ),
        };
        let nonce = format!("{client_nonce}{}", self.server_nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            b64_encode(&creds.salt),
            creds.iterations
        );
        let mut expected_cbind = gs2_header.into_bytes();
        expected_cbind.extend_from_slice(&cb_data);
        self.state = State::SentServerFirst {
            expected_cbind,
            nonce,
            auth_message_prefix: format!("{client_first_bare},{server_first}"),
            creds,
            known_user,
        };
        Ok(server_first.into_bytes())
    }

    fn server_nonce(&self) -> String {
        #[cfg(test)]
        if let Some(n) = &self.fixed_nonce {
            return n.clone();
        }
        // Base64 output is printable ASCII without commas, as `r=` requires.
        b64_encode(&rand::random::<[u8; SERVER_NONCE_BYTES]>())
    }

    /// Checks the client-final-message (RFC 5802 §5.1, §7): channel binding,
    /// nonce and proof, all in constant time. Returns the server-final-message
    /// `v=…` to send with `<success/>`.
    ///
    /// Syntax errors give [`SaslError::MalformedRequest`]; a wrong proof,
    /// unknown user, channel-binding or nonce mismatch give
    /// [`SaslError::NotAuthorized`].
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let State::SentServerFirst {
            expected_cbind,
            nonce,
            auth_message_prefix,
            creds,
            known_user,
        } = mem::replace(&mut self.state, State::Done)
        else {
            return Err(SaslError::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        // The proof is always last and base64 has no commas, so the last
        // ",p=" splits client-final-message-without-proof from the proof.
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(SaslError::MalformedRequest)?;
        let mut attrs = without_proof.split(',');
        let cbind = b64_decode(next_attr(&mut attrs, "c=")?)?;
        let client_nonce = next_attr(&mut attrs, "r=")?;
        attrs.try_for_each(check_extension)?;
        let proof = b64_decode(proof)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslError::MalformedRequest);
        }

        // Do all the work regardless of which check fails, so timing says
        // nothing about the user's existence or which check failed.
        let hash = self.hash;
        let auth_message = format!("{auth_message_prefix},{without_proof}");
        let client_signature = hash.hmac(&creds.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let ok = hash.digest(&client_key).ct_eq(&creds.stored_key)
            & cbind.ct_eq(&expected_cbind)
            & client_nonce.as_bytes().ct_eq(nonce.as_bytes())
            & Choice::from(u8::from(known_user));
        let server_signature = hash.hmac(&creds.server_key, &[auth_message.as_bytes()]);
        if bool::from(ok) {
            Ok(format!("v={}", b64_encode(&server_signature)).into_bytes())
        } else {
            Err(SaslError::NotAuthorized)
        }
    }
}

/// Takes the next attribute, which must start with `prefix` (e.g. `"n="`).
fn next_attr<'a>(
    attrs: &mut impl Iterator<Item = &'a str>,
    prefix: &str,
) -> Result<&'a str, SaslError> {
    attrs
        .next()
        .and_then(|a| a.strip_prefix(prefix))
        .ok_or(SaslError::MalformedRequest)
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802 §7): visible ASCII but ','.
fn is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x2B | 0x2D..=0x7E)
}

/// Optional trailing extensions: `ALPHA "=" 1*value-char` (RFC 5802 §7).
/// We implement none; "m" marks mandatory ones (§5.1: MUST fail) and the
/// letters SCRAM itself uses are refused to keep parsing unambiguous.
fn check_extension(attr: &str) -> Result<(), SaslError> {
    match attr.as_bytes() {
        [k, b'=', value @ ..]
            if k.is_ascii_alphabetic()
                && !b"mnracpsiev".contains(k)
                && !value.is_empty()
                && !value.contains(&0) =>
        {
            Ok(())
        }
        _ => Err(SaslError::MalformedRequest),
    }
}

/// Decodes a `saslname` (RFC 5802 §5.1): "=2C" → ",", "=3D" → "=", any
/// other "=" (and NUL, and emptiness) is an error.
fn unescape_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() || s.contains('\0') {
        return Err(SaslError::MalformedRequest);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        // `find` returns a char boundary, so `split_at` cannot panic.
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        if let Some(t) = tail.strip_prefix("=2C") {
            out.push(',');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("=3D") {
            out.push('=');
            rest = t;
        } else {
            return Err(SaslError::MalformedRequest);
        }
    }
    out.push_str(rest);
    Ok(out)
}
