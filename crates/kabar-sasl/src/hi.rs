//! SCRAM's `Hi` (RFC 5802 §2.2: PBKDF2-HMAC, RFC 8018 §5.2, one output block) as a loop of raw
//! compression-function calls.
//!
//! Every iteration hashes a fixed-size message (`U_{i-1}`, then the inner digest) under a fixed
//! key, so HMAC's two pad blocks are compressed once up front and each iteration is exactly two
//! compressions of one pre-padded block: no re-keying, no hasher state copies, no buffering, no
//! allocation. The compression functions are sha1's/sha2's, which pick the SHA-NI backend at run
//! time (cpufeatures) where the CPU has it. Generic `Hmac<D>`-based loops (the `pbkdf2` crate, or
//! cloning a keyed `Hmac`) spend a large share of each iteration around the compression instead.

use sha1::Digest as _;

const BLOCK: usize = 64;
const IPAD: u8 = 0x36;
const OPAD: u8 = 0x5c;

/// A Merkle–Damgård hash with 64-byte blocks, big-endian words and a 64-bit length (SHA-1, SHA-256).
pub(crate) trait Md64 {
    /// Chaining state (`[u32; 5]` / `[u32; 8]`); the digest is its words, big-endian.
    type State: Copy + AsRef<[u32]> + AsMut<[u32]>;
    const IV: Self::State;
    fn compress(state: &mut Self::State, block: &[u8; BLOCK]);
    /// `H(data)` for keys longer than a block (RFC 2104 §2).
    fn digest(data: &[u8]) -> Vec<u8>;
}

pub(crate) enum Sha1Md {}
pub(crate) enum Sha256Md {}

impl Md64 for Sha1Md {
    type State = [u32; 5];
    const IV: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    fn compress(state: &mut [u32; 5], block: &[u8; BLOCK]) {
        sha1::compress(state, &[(*block).into()]);
    }
    fn digest(data: &[u8]) -> Vec<u8> {
        sha1::Sha1::digest(data).to_vec()
    }
}

impl Md64 for Sha256Md {
    type State = [u32; 8];
    const IV: [u32; 8] = [
        0x6a09_e667,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
        sha2::compress256(state, &[(*block).into()]);
    }
    fn digest(data: &[u8]) -> Vec<u8> {
        sha2::Sha256::digest(data).to_vec()
    }
}

/// `Hi(key, salt, iterations)` in progress: the HMAC pad states and the running `U_i` / XOR sum.
#[derive(Clone)]
pub(crate) struct Hi<H: Md64> {
    inner: H::State,
    outer: H::State,
    /// `U_i` of the last iteration done.
    u: H::State,
    /// `U_1 XOR … XOR U_i`.
    acc: H::State,
}

impl<H: Md64> Hi<H> {
    /// Keys HMAC with `key` and runs the first iteration, `U_1 = HMAC(key, salt || INT(1))`.
    pub(crate) fn new(key: &[u8], salt: &[u8]) -> Self {
        let hashed;
        let key = if key.len() > BLOCK {
            hashed = H::digest(key);
            &hashed[..]
        } else {
            key
        };
        let pad = |byte: u8| {
            let mut block = [byte; BLOCK];
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            let mut state = H::IV;
            H::compress(&mut state, &block);
            state
        };
        let (inner, outer) = (pad(IPAD), pad(OPAD));
        // U_1's message has any length; hash it after the pad block with ordinary MD padding.
        let mut first = salt.to_vec();
        first.extend_from_slice(&1u32.to_be_bytes());
        let mut ih = inner;
        md_finish::<H>(&mut ih, &first, BLOCK);
        let mut u = outer;
        md_finish::<H>(&mut u, &to_bytes::<H>(&ih), BLOCK);
        Hi {
            inner,
            outer,
            u,
            acc: u,
        }
    }

    /// Runs `n` more iterations `U_i = HMAC(key, U_{i-1})`, folding each into the sum.
    pub(crate) fn iterate(&mut self, n: u32) {
        let mut block = Self::padded_block();
        for _ in 0..n {
            self.inner(&mut block);
            self.outer(&block);
        }
    }

    /// The fixed part of an iteration's block: MD padding for a message of one pad block plus one
    /// digest (both messages of an iteration are that long, so one block serves the inner and the
    /// outer hash: only its first digest-length bytes change).
    fn padded_block() -> [u8; BLOCK] {
        let len = size_of::<H::State>();
        let mut block = [0u8; BLOCK];
        block[len] = 0x80;
        block[BLOCK - 8..].copy_from_slice(&(((BLOCK + len) as u64) * 8).to_be_bytes());
        block
    }

    fn inner(&self, block: &mut [u8; BLOCK]) {
        put_words(block, self.u.as_ref());
        let mut ih = self.inner;
        H::compress(&mut ih, block);
        put_words(block, ih.as_ref());
    }

    fn outer(&mut self, block: &[u8; BLOCK]) {
        self.u = self.outer;
        H::compress(&mut self.u, block);
        for (a, w) in self.acc.as_mut().iter_mut().zip(self.u.as_ref()) {
            *a ^= w;
        }
    }

    /// `U_1 XOR … XOR U_i` so far (`Hi`'s result once every iteration is done).
    pub(crate) fn output(&self) -> Vec<u8> {
        to_bytes::<H>(&self.acc)
    }
}

/// Runs `n` more iterations of two independent derivations in lockstep. Each compression depends on
/// the one before it in its own chain, so one chain alone leaves the SHA units waiting on
/// instruction latency; alternating two chains lets the CPU overlap them (same results as
/// iterating each alone).
pub(crate) fn iterate_pair<A: Md64, B: Md64>(a: &mut Hi<A>, b: &mut Hi<B>, n: u32) {
    let (mut block_a, mut block_b) = (Hi::<A>::padded_block(), Hi::<B>::padded_block());
    for _ in 0..n {
        a.inner(&mut block_a);
        b.inner(&mut block_b);
        a.outer(&block_a);
        b.outer(&block_b);
    }
}

/// `Hi(key, salt, iterations)` in one call; `iterations` ≥ 1.
pub(crate) fn hi<H: Md64>(key: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut h = Hi::<H>::new(key, salt);
    h.iterate(iterations.saturating_sub(1));
    h.output()
}

fn put_words(block: &mut [u8; BLOCK], words: &[u32]) {
    for (chunk, w) in block.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_be_bytes());
    }
}

fn to_bytes<H: Md64>(state: &H::State) -> Vec<u8> {
    state
        .as_ref()
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

/// Hashes the rest of a message, `data`, into `state`, which has already absorbed `prefix_len`
/// bytes (whole blocks), and appends the MD length padding.
fn md_finish<H: Md64>(state: &mut H::State, data: &[u8], prefix_len: usize) {
    let total_bits = ((prefix_len + data.len()) as u64) * 8;
    let mut chunks = data.chunks_exact(BLOCK);
    for chunk in &mut chunks {
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(chunk);
        H::compress(state, &block);
    }
    let rest = chunks.remainder();
    let mut block = [0u8; BLOCK];
    block[..rest.len()].copy_from_slice(rest);
    block[rest.len()] = 0x80;
    if rest.len() + 1 > BLOCK - 8 {
        H::compress(state, &block);
        block = [0u8; BLOCK];
    }
    block[BLOCK - 8..].copy_from_slice(&total_bits.to_be_bytes());
    H::compress(state, &block);
}
