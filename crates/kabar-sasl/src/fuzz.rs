//! Shared fuzz driver for `fuzz/fuzz_targets/sasl_scram.rs` and
//! `tests/corpus_replay.rs`. Not part of the supported API.
//!
//! Input layout: byte 0 selects the setup, the rest is split at the first
//! `\n` into client-first and client-final messages. Bits of byte 0:
//! `0..=2` mechanism index into [`Mechanism::ALL`] (mod 5; 4 = PLAIN),
//! `0x10` tls-exporter data available, `0x20` tls-server-end-point data
//! available, `0x40` PLUS advertised, `0x80` the user exists.
//! The whole input is additionally fed raw to [`parse_plain`] and to a
//! SCRAM-SHA-1 server's `client_first`.

use crate::{
    derive_credentials, parse_plain, verify_plain, ChannelBindings, Mechanism, ScramHash,
    ScramServer,
};

/// Runs `data` through every parser and state transition; must never panic.
pub fn exercise(data: &[u8]) {
    let _ = parse_plain(data);
    if let Ok(mut s) = ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false) {
        let _ = s.client_first(data);
    }

    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // The index is reduced modulo the array length, so it is in bounds.
    let mechanism = Mechanism::ALL[usize::from(sel & 0x07) % Mechanism::ALL.len()];
    let bindings = ChannelBindings {
        tls_exporter: (sel & 0x10 != 0).then(|| vec![0xE5; 32]),
        tls_server_end_point: (sel & 0x20 != 0).then(|| vec![0x5E; 32]),
    };
    let (first, last) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    // One iteration keeps fuzzing fast; the code path is identical.
    let hash = mechanism.hash().unwrap_or(ScramHash::Sha256);
    let creds = derive_credentials(hash, "pencil", b"fuzz-salt", 1).ok();

    if mechanism == Mechanism::Plain {
        if let Ok(m) = parse_plain(rest) {
            let _ = verify_plain(&m.password, creds.as_ref(), hash);
        }
        return;
    }
    let Ok(mut server) = ScramServer::new(mechanism, &bindings, sel & 0x40 != 0) else {
        return;
    };
    if server.client_first(first).is_ok() {
        let user = if sel & 0x80 != 0 {
            creds.as_ref()
        } else {
            None
        };
        let _ = server.server_first(user);
        let _ = server.client_final(last);
    }
    // Out-of-order calls after the exchange ended must fail cleanly too.
    let _ = server.client_first(first);
    let _ = server.server_first(None);
    let _ = server.client_final(last);
}
