//! Microbenchmark of one SCRAM key derivation (PBKDF2, 4096 iterations) per hash:
//! `taskset -c 0 cargo run --release -p kabar-sasl --example derive_bench [rounds]`. Prints µs per
//! derivation, wall clock and CPU time of this process (the machine is shared, so CPU time is the
//! comparable figure), for `Derivation` (registration), `derive_credentials` (login/CLI) and the
//! `pbkdf2` crate's generic `Hmac` loop as the reference. Figures go to docs/BENCHMARKS.md; nothing
//! asserts on them.

use std::time::Instant;

use hmac::{Hmac, Mac};
use kabar_sasl::{derive_credentials, step_pair, Derivation, ScramHash, DEFAULT_ITERATIONS};

/// CPU seconds this thread has run (Linux /proc schedstat, nanosecond resolution; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}

fn measure(label: &str, rounds: u32, mut f: impl FnMut(&str)) {
    let (t, c) = (Instant::now(), cpu_seconds());
    for i in 0..rounds {
        f(&format!("benchpass{i}"));
    }
    let wall = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let cpu = (cpu_seconds() - c) * 1e6 / f64::from(rounds);
    println!("{label:<44} {wall:>8.1} µs wall {cpu:>8.1} µs CPU per {DEFAULT_ITERATIONS}-iteration derivation");
}

/// The registration loop before the hand-rolled one: clone a keyed `Hmac` and allocate per iteration.
fn clone_hmac_loop<M: Mac + Clone + hmac::digest::KeyInit>(pw: &str, salt: &[u8]) -> Vec<u8> {
    let Ok(prf) = <M as Mac>::new_from_slice(pw.as_bytes()) else {
        return Vec::new();
    };
    let mac = |data: &[u8]| {
        let mut m = prf.clone();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    let mut u = mac(&[salt, &1u32.to_be_bytes()].concat());
    let mut acc = u.clone();
    for _ in 1..DEFAULT_ITERATIONS {
        u = mac(&u);
        acc.iter_mut().zip(&u).for_each(|(a, b)| *a ^= b);
    }
    acc
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let salt = [7u8; 16];
    for hash in [ScramHash::Sha1, ScramHash::Sha256] {
        measure(
            &format!("{hash:?} Derivation (registration)"),
            rounds,
            |pw| {
                let d =
                    Derivation::new(hash, pw, &salt, DEFAULT_ITERATIONS).map(Derivation::finish);
                std::hint::black_box(d.ok());
            },
        );
        measure(
            &format!("{hash:?} derive_credentials (login/CLI)"),
            rounds,
            |pw| {
                std::hint::black_box(derive_credentials(hash, pw, &salt, DEFAULT_ITERATIONS).ok());
            },
        );
        measure(
            &format!("{hash:?} pbkdf2 crate (reference)"),
            rounds,
            |pw| {
                let mut out = [0u8; 32];
                match hash {
                    ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(
                        pw.as_bytes(),
                        &salt,
                        DEFAULT_ITERATIONS,
                        &mut out[..20],
                    ),
                    ScramHash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                        pw.as_bytes(),
                        &salt,
                        DEFAULT_ITERATIONS,
                        &mut out,
                    ),
                }
                std::hint::black_box(out);
            },
        );
        measure(
            &format!("{hash:?} clone-keyed-Hmac loop (before)"),
            rounds,
            |pw| {
                std::hint::black_box(match hash {
                    ScramHash::Sha1 => clone_hmac_loop::<Hmac<sha1::Sha1>>(pw, &salt),
                    ScramHash::Sha256 => clone_hmac_loop::<Hmac<sha2::Sha256>>(pw, &salt),
                });
            },
        );
    }
    measure(
        "both hashes one after the other (per account)",
        rounds,
        |pw| {
            for hash in [ScramHash::Sha1, ScramHash::Sha256] {
                std::hint::black_box(
                    Derivation::new(hash, pw, &salt, DEFAULT_ITERATIONS)
                        .map(Derivation::finish)
                        .ok(),
                );
            }
        },
    );
    measure(
        "both hashes in lockstep, step_pair (per account)",
        rounds,
        |pw| {
            let (Ok(mut a), Ok(mut b)) = (
                Derivation::new(ScramHash::Sha1, pw, &salt, DEFAULT_ITERATIONS),
                Derivation::new(ScramHash::Sha256, pw, &salt, DEFAULT_ITERATIONS),
            ) else {
                return;
            };
            while !step_pair(&mut a, &mut b, 256) {}
            std::hint::black_box((a.finish(), b.finish()));
        },
    );
}
