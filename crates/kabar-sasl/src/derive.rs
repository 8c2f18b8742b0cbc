//! Resumable SCRAM key derivation: PBKDF2 (RFC 8018 §5.2, one block, as SCRAM's `Hi`) run a slice of
//! iterations at a time, so a server can interleave a registration surge's key derivations with the
//! traffic of people already chatting instead of giving them whole cores for milliseconds at a time.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::{saslprep_nonempty, ScramCredentials, ScramHash, SaslError};

#[derive(Clone)]
enum Prf {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
}

impl Prf {
    /// `HMAC(key, data)` from the pre-keyed state (cloning it saves re-hashing the key each time).
    fn mac(&self, data: &[u8]) -> Vec<u8> {
        match self.clone() {
            Prf::Sha1(mut m) => {
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Prf::Sha256(mut m) => {
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }
}

/// One SCRAM credential derivation in progress.
pub struct Derivation {
    hash: ScramHash,
    prf: Prf,
    salt: Vec<u8>,
    iterations: u32,
    /// `U_i` of the last iteration done.
    u: Vec<u8>,
    /// `U_1 XOR … XOR U_i`.
    acc: Vec<u8>,
    done: u32,
}

impl Derivation {
    /// Starts `Hi(SASLprep(password), salt, iterations)` (RFC 5802 §2.2) and does its first
    /// iteration. Fails like [`crate::derive_credentials`].
    pub fn new(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Result<Derivation, SaslError> {
        if iterations == 0 {
            return Err(SaslError::MalformedRequest);
        }
        let prepped = saslprep_nonempty(password)?;
        // HMAC takes keys of any length, so keying cannot fail; map it anyway rather than panic.
        let prf = match hash {
            ScramHash::Sha1 => Prf::Sha1(
                <Hmac<Sha1> as KeyInit>::new_from_slice(prepped.as_bytes()).map_err(|_| SaslError::MalformedRequest)?,
            ),
            ScramHash::Sha256 => Prf::Sha256(
                <Hmac<Sha256> as KeyInit>::new_from_slice(prepped.as_bytes()).map_err(|_| SaslError::MalformedRequest)?,
            ),
        };
        let mut first = salt.to_vec();
        first.extend_from_slice(&1u32.to_be_bytes());
        let u = prf.mac(&first);
        Ok(Derivation { hash, prf, salt: salt.to_vec(), iterations, acc: u.clone(), u, done: 1 })
    }

    /// Runs up to `slice` more iterations; true when the derivation is complete.
    pub fn step(&mut self, slice: u32) -> bool {
        let end = self.done.saturating_add(slice).min(self.iterations);
        while self.done < end {
            self.u = self.prf.mac(&self.u);
            for (a, b) in self.acc.iter_mut().zip(&self.u) {
                *a ^= b;
            }
            self.done += 1;
        }
        self.done >= self.iterations
    }

    /// The credentials (RFC 5802 §3); completes any iterations still missing first.
    pub fn finish(mut self) -> ScramCredentials {
        self.step(u32::MAX);
        let client_key = self.hash.hmac(&self.acc, &[b"Client Key"]);
        ScramCredentials {
            salt: self.salt,
            iterations: self.iterations,
            stored_key: self.hash.digest(&client_key),
            server_key: self.hash.hmac(&self.acc, &[b"Server Key"]),
        }
    }
}

/// [`Derivation`] with a fresh random salt, like [`crate::new_credentials`].
pub fn new_derivation(hash: ScramHash, password: &str, iterations: u32) -> Result<Derivation, SaslError> {
    let salt: [u8; crate::SALT_LEN] = rand::random();
    Derivation::new(hash, password, &salt, iterations)
}
