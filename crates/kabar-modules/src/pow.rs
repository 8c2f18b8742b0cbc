//! `urn:kabar:pow:0`: hashcash-style proof of work for account registration (docs/REGISTRATION.md).
//!
//! No XEP defines proof of work for registration, so kabar documents its own: the server hands out
//! a challenge string and a difficulty `d`; the client finds any nonce (at most
//! [`MAX_NONCE_BYTES`] bytes of UTF-8, a decimal counter in practice) such that
//! `SHA-256(challenge ":" nonce)` starts with `d` zero bits. Finding one costs about 2^d hashes;
//! checking it costs one.
//!
//! Challenges are stateless until used: each carries its expiry, its difficulty and a random id,
//! authenticated by an HMAC (a per-process key) over those and the client address it was issued
//! to, so the server keeps nothing per form handed out (asking for forms is free for a flooder).
//! Only a challenge that was solved and used is remembered, by id until it expires, so it cannot
//! be replayed; that set is bounded ([`PowGate::new`]'s `max_remembered`), and filling it takes
//! that many solved challenges within one lifetime.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const NS_POW: &str = "urn:kabar:pow:0";
/// Longest nonce accepted.
pub const MAX_NONCE_BYTES: usize = 64;

const ID_LEN: usize = 16;
const MAC_LEN: usize = 16;
/// expiry (u64 BE) | difficulty (u8) | id | truncated HMAC.
const RAW_LEN: usize = 8 + 1 + ID_LEN + MAC_LEN;
const MAC_DOMAIN: &[u8] = b"kabar-pow-v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PowError {
    #[error("the proof-of-work challenge is malformed")]
    Malformed,
    #[error("the proof-of-work challenge was not issued by this server to this address")]
    Forged,
    #[error("the proof-of-work difficulty was raised; fetch a new registration form")]
    Outdated,
    #[error("the proof-of-work challenge has expired; fetch a new registration form")]
    Expired,
    #[error("the proof-of-work solution is wrong: the hash has too few leading zero bits")]
    Wrong,
    #[error("the proof-of-work challenge was already used; fetch a new registration form")]
    Reused,
    #[error("too many proof-of-work registrations at the moment; try again later")]
    Full,
}

/// A checked, not yet used challenge.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    id: [u8; ID_LEN],
    expires: u64,
}

pub struct PowGate {
    key: [u8; 32],
    ttl_secs: u64,
    max_remembered: usize,
    /// Used challenge id → expiry.
    used: Mutex<HashMap<[u8; ID_LEN], u64>>,
}

/// Number of leading zero bits of `hash`.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for b in hash {
        if *b == 0 {
            bits += 8;
        } else {
            return bits + b.leading_zeros();
        }
    }
    bits
}

/// Whether `nonce` solves `challenge` at `difficulty`.
pub fn solves(challenge: &str, nonce: &str, difficulty: u8) -> bool {
    let hash = Sha256::new().chain_update(challenge.as_bytes()).chain_update(b":").chain_update(nonce.as_bytes()).finalize();
    leading_zero_bits(&hash) >= u32::from(difficulty)
}

impl PowGate {
    pub fn new(ttl_secs: u64, max_remembered: usize) -> PowGate {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        PowGate { key, ttl_secs: ttl_secs.max(1), max_remembered: max_remembered.max(1), used: Mutex::new(HashMap::new()) }
    }

    fn mac(&self, body: &[u8], client: &str) -> [u8; MAC_LEN] {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(MAC_DOMAIN);
        mac.update(body);
        mac.update(client.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A fresh challenge for `client` (the registration limiter's key of the peer address).
    pub fn issue(&self, client: &str, difficulty: u8, now: u64) -> String {
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.extend_from_slice(&now.saturating_add(self.ttl_secs).to_be_bytes());
        raw.push(difficulty);
        let mut id = [0u8; ID_LEN];
        rand::rng().fill_bytes(&mut id);
        raw.extend_from_slice(&id);
        let mac = self.mac(&raw, client);
        raw.extend_from_slice(&mac);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a submitted challenge and nonce without using the challenge up: issued here to
    /// `client`, not expired, at least `difficulty` (the current setting), and solved.
    pub fn check(&self, challenge: &str, nonce: &str, client: &str, difficulty: u8, now: u64) -> Result<Ticket, PowError> {
        if challenge.len() > 2 * RAW_LEN || nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
            return Err(PowError::Malformed);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(challenge).map_err(|_| PowError::Malformed)?;
        if raw.len() != RAW_LEN {
            return Err(PowError::Malformed);
        }
        let (body, mac) = raw.split_at(RAW_LEN - MAC_LEN);
        // Not secret-dependent timing that matters: the MAC binds public data, but compare in
        // constant time anyway so the check never becomes a forgery oracle.
        let expected = self.mac(body, client);
        if mac.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(PowError::Forged);
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&body[..8]);
        let expires = u64::from_be_bytes(expiry);
        let issued_difficulty = body[8];
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&body[9..9 + ID_LEN]);
        if now >= expires {
            return Err(PowError::Expired);
        }
        if issued_difficulty < difficulty {
            return Err(PowError::Outdated);
        }
        if !solves(challenge, nonce, issued_difficulty) {
            return Err(PowError::Wrong);
        }
        Ok(Ticket { id, expires })
    }

    /// Uses a checked challenge up; a second use of the same challenge fails.
    pub fn consume(&self, ticket: Ticket, now: u64) -> Result<(), PowError> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.contains_key(&ticket.id) {
            return Err(PowError::Reused);
        }
        if used.len() >= self.max_remembered {
            used.retain(|_, expires| *expires > now);
            if used.len() >= self.max_remembered {
                return Err(PowError::Full);
            }
        }
        used.insert(ticket.id, ticket.expires);
        Ok(())
    }

    /// Used challenges remembered now (expired ones included until the next sweep).
    pub fn remembered(&self) -> usize {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solve(challenge: &str, difficulty: u8) -> String {
        (0u64..).map(|n| n.to_string()).find(|n| solves(challenge, n, difficulty)).unwrap_or_default()
    }

    #[test]
    fn zero_bits_are_counted_across_bytes() {
        assert_eq!(leading_zero_bits(&[0, 0, 0x10, 0xff]), 19);
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn solved_challenge_is_accepted_once() {
        let gate = PowGate::new(60, 10);
        let c = gate.issue("192.0.2.1", 8, 1000);
        let nonce = solve(&c, 8);
        let ticket = gate.check(&c, &nonce, "192.0.2.1", 8, 1000).unwrap();
        assert_eq!(gate.consume(ticket, 1000), Ok(()));
        let again = gate.check(&c, &nonce, "192.0.2.1", 8, 1001).unwrap();
        assert_eq!(gate.consume(again, 1001), Err(PowError::Reused));
    }

    #[test]
    fn other_address_tampering_expiry_difficulty_and_wrong_nonce_are_refused() {
        let gate = PowGate::new(60, 10);
        let c = gate.issue("192.0.2.1", 8, 1000);
        let nonce = solve(&c, 8);
        assert_eq!(gate.check(&c, &nonce, "192.0.2.2", 8, 1000).unwrap_err(), PowError::Forged);
        assert_eq!(gate.check(&c, &nonce, "192.0.2.1", 8, 1060).unwrap_err(), PowError::Expired);
        assert_eq!(gate.check(&c, &nonce, "192.0.2.1", 9, 1000).unwrap_err(), PowError::Outdated);
        let wrong = (0u64..).map(|n| n.to_string()).find(|n| !solves(&c, n, 8)).unwrap();
        assert_eq!(gate.check(&c, &wrong, "192.0.2.1", 8, 1000).unwrap_err(), PowError::Wrong);
        // Lowering the difficulty on the wire is caught by the MAC.
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&c).unwrap();
        raw[8] = 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(gate.check(&tampered, "0", "192.0.2.1", 1, 1000).unwrap_err(), PowError::Forged);
        assert_eq!(gate.check("not base64!", "0", "192.0.2.1", 1, 1000).unwrap_err(), PowError::Malformed);
        assert_eq!(gate.check(&c, "", "192.0.2.1", 8, 1000).unwrap_err(), PowError::Malformed);
    }

    #[test]
    fn remembered_set_is_bounded_and_sweeps_expired_entries() {
        let gate = PowGate::new(10, 2);
        let mut tickets = Vec::new();
        for _ in 0..3 {
            let c = gate.issue("a", 1, 100);
            tickets.push(gate.check(&c, &solve(&c, 1), "a", 1, 100).unwrap());
        }
        assert_eq!(gate.consume(tickets[0], 100), Ok(()));
        assert_eq!(gate.consume(tickets[1], 100), Ok(()));
        assert_eq!(gate.consume(tickets[2], 100), Err(PowError::Full));
        // Once the first two expired they are swept and the third fits.
        assert_eq!(gate.consume(tickets[2], 110), Ok(()));
        assert_eq!(gate.remembered(), 1);
    }
}
