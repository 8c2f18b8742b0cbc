//! Resumable SCRAM key derivation: PBKDF2 (RFC 8018 §5.2, one block, as SCRAM's `Hi`) run a slice of
//! iterations at a time, so a server can interleave a registration surge's key derivations with the
//! traffic of people already chatting instead of giving them whole cores for milliseconds at a time.

use crate::hi::{iterate_pair, Hi, Sha1Md, Sha256Md};
use crate::{saslprep_nonempty, SaslError, ScramCredentials, ScramHash};

enum State {
    Sha1(Hi<Sha1Md>),
    Sha256(Hi<Sha256Md>),
}

/// One SCRAM credential derivation in progress.
pub struct Derivation {
    hash: ScramHash,
    state: State,
    salt: Vec<u8>,
    iterations: u32,
    done: u32,
}

impl Derivation {
    /// Starts `Hi(SASLprep(password), salt, iterations)` (RFC 5802 §2.2) and does its first
    /// iteration. Fails like [`crate::derive_credentials`].
    pub fn new(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Derivation, SaslError> {
        if iterations == 0 {
            return Err(SaslError::MalformedRequest);
        }
        let prepped = saslprep_nonempty(password)?;
        let state = match hash {
            ScramHash::Sha1 => State::Sha1(Hi::new(prepped.as_bytes(), salt)),
            ScramHash::Sha256 => State::Sha256(Hi::new(prepped.as_bytes(), salt)),
        };
        Ok(Derivation {
            hash,
            state,
            salt: salt.to_vec(),
            iterations,
            done: 1,
        })
    }

    /// Runs up to `slice` more iterations; true when the derivation is complete.
    pub fn step(&mut self, slice: u32) -> bool {
        let n = slice.min(self.iterations - self.done);
        match &mut self.state {
            State::Sha1(h) => h.iterate(n),
            State::Sha256(h) => h.iterate(n),
        }
        self.done += n;
        self.done >= self.iterations
    }

    /// The credentials (RFC 5802 §3); completes any iterations still missing first.
    pub fn finish(mut self) -> ScramCredentials {
        self.step(u32::MAX);
        let salted = match &self.state {
            State::Sha1(h) => h.output(),
            State::Sha256(h) => h.output(),
        };
        crate::keys_from_salted(self.hash, salted, self.salt, self.iterations)
    }
}

/// Runs up to `slice` more iterations of two derivations (e.g. one account's SCRAM-SHA-1 and
/// SCRAM-SHA-256 keys) in lockstep, which is faster than stepping them one after the other (see
/// `hi::iterate_pair`); true when both are complete. Results equal [`Derivation::step`]'s.
pub fn step_pair(a: &mut Derivation, b: &mut Derivation, slice: u32) -> bool {
    let n = slice.min(a.iterations - a.done).min(b.iterations - b.done);
    match (&mut a.state, &mut b.state) {
        (State::Sha1(x), State::Sha256(y)) => iterate_pair(x, y, n),
        (State::Sha256(x), State::Sha1(y)) => iterate_pair(x, y, n),
        (State::Sha1(x), State::Sha1(y)) => iterate_pair(x, y, n),
        (State::Sha256(x), State::Sha256(y)) => iterate_pair(x, y, n),
    }
    a.done += n;
    b.done += n;
    // Unequal iteration counts: the longer one finishes alone.
    let rest = slice - n;
    let a_done = a.step(rest);
    b.step(rest) && a_done
}

/// [`Derivation`] with a fresh random salt, like [`crate::new_credentials`].
pub fn new_derivation(
    hash: ScramHash,
    password: &str,
    iterations: u32,
) -> Result<Derivation, SaslError> {
    let salt: [u8; crate::SALT_LEN] = rand::random();
    Derivation::new(hash, password, &salt, iterations)
}
