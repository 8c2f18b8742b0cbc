//! Who may create an account now: the registration mode and the proof-of-work difficulty, which
//! start from `[registration]` and which the admin API switches at runtime (docs/REGISTRATION.md).
//!
//! The core holds the policy (like `Server::registration_enabled`, which mirrors
//! [`RegistrationMode::is_public`]) so that both registration paths read it: open in-band
//! registration (`kabar-modules/src/register.rs`) and invites (`invite.rs`). The proof-of-work
//! challenges themselves belong to the register module.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Deserialize;

use crate::config::RegistrationConfig;
use crate::metrics::Counter;

/// The highest proof-of-work difficulty accepted (leading zero bits of a SHA-256). 2^32 hashes is
/// already hours in a browser; anything above would lock every newcomer out.
pub const MAX_POW_DIFFICULTY: u8 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationMode {
    /// Anyone may register (subject to the per-IP limit and admission control).
    Open,
    /// Only XEP-0401/XEP-0445 invites create accounts.
    InviteOnly,
    /// Anyone who solves a hashcash-style challenge may register; invites still work.
    ProofOfWork,
    /// Nobody registers, not even with an invite (admins still create accounts).
    Closed,
}

impl RegistrationMode {
    pub const ALL: [RegistrationMode; 4] =
        [RegistrationMode::Open, RegistrationMode::InviteOnly, RegistrationMode::ProofOfWork, RegistrationMode::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMode::Open => "open",
            RegistrationMode::InviteOnly => "invite-only",
            RegistrationMode::ProofOfWork => "proof-of-work",
            RegistrationMode::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<RegistrationMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether people without an invite may register (the XEP-0077 stream feature is offered).
    pub fn is_public(self) -> bool {
        matches!(self, RegistrationMode::Open | RegistrationMode::ProofOfWork)
    }

    /// Whether invites may create accounts.
    pub fn admits_invites(self) -> bool {
        self != RegistrationMode::Closed
    }

    fn from_u8(v: u8) -> RegistrationMode {
        Self::ALL.get(usize::from(v)).copied().unwrap_or(RegistrationMode::Closed)
    }

    fn to_u8(self) -> u8 {
        Self::ALL.iter().position(|m| *m == self).unwrap_or(3) as u8
    }
}

/// Outcomes of proof-of-work registrations, for `/metrics`.
#[derive(Debug, Default)]
pub struct PowCounters {
    /// Challenges handed out (registration forms).
    pub issued: Counter,
    /// Registrations whose solution was accepted.
    pub accepted: Counter,
    /// Submissions without a challenge or solution (clients that do not speak `urn:kabar:pow:0`).
    pub missing: Counter,
    /// Solutions whose hash has too few leading zero bits.
    pub wrong: Counter,
    /// Challenges that were forged, malformed, for another address or an outdated difficulty.
    pub invalid: Counter,
    pub expired: Counter,
    pub reused: Counter,
}

/// The runtime registration policy.
#[derive(Debug)]
pub struct RegistrationState {
    mode: AtomicU8,
    pow_difficulty: AtomicU8,
    pub pow: PowCounters,
}

impl RegistrationState {
    pub fn new(config: &RegistrationConfig) -> Self {
        RegistrationState {
            mode: AtomicU8::new(config.initial_mode().to_u8()),
            pow_difficulty: AtomicU8::new(config.pow_difficulty.clamp(1, MAX_POW_DIFFICULTY)),
            pow: PowCounters::default(),
        }
    }

    pub fn mode(&self) -> RegistrationMode {
        RegistrationMode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// Sets the mode and returns the previous one. Callers keep `Server::registration_enabled` in
    /// step (`kabar_modules::register::set_mode`).
    pub fn swap_mode(&self, mode: RegistrationMode) -> RegistrationMode {
        RegistrationMode::from_u8(self.mode.swap(mode.to_u8(), Ordering::Relaxed))
    }

    pub fn pow_difficulty(&self) -> u8 {
        self.pow_difficulty.load(Ordering::Relaxed)
    }

    /// Sets the difficulty (clamped to 1..=[`MAX_POW_DIFFICULTY`]) and returns the previous one.
    pub fn swap_pow_difficulty(&self, bits: u8) -> u8 {
        self.pow_difficulty.swap(bits.clamp(1, MAX_POW_DIFFICULTY), Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip_and_legacy_enabled_maps_to_open_or_invite_only() {
        for m in RegistrationMode::ALL {
            assert_eq!(RegistrationMode::parse(m.as_str()), Some(m));
            assert_eq!(RegistrationMode::from_u8(m.to_u8()), m);
        }
        let mut c = RegistrationConfig::default();
        assert_eq!(RegistrationState::new(&c).mode(), RegistrationMode::InviteOnly);
        c.enabled = true;
        assert_eq!(RegistrationState::new(&c).mode(), RegistrationMode::Open);
        c.mode = Some(RegistrationMode::Closed);
        assert_eq!(RegistrationState::new(&c).mode(), RegistrationMode::Closed);
    }

    #[test]
    fn difficulty_is_clamped() {
        let c = RegistrationConfig { pow_difficulty: 200, ..Default::default() };
        let s = RegistrationState::new(&c);
        assert_eq!(s.pow_difficulty(), MAX_POW_DIFFICULTY);
        assert_eq!(s.swap_pow_difficulty(0), MAX_POW_DIFFICULTY);
        assert_eq!(s.pow_difficulty(), 1);
    }
}
