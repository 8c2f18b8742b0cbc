//! Client side of SCRAM-SHA-1 (RFC 5802, no channel binding: gs2 header `n,,`) and PLAIN, plus the
//! SaltedPassword cache.
//!
//! The cache plays the part of a real client that stores its SCRAM keys instead of the password: it
//! maps (iterations, salt, password) to SaltedPassword so a login costs two HMACs on the generator
//! instead of a 4096-round PBKDF2. Without it the generator, not the server, limits login storms.
//! It can be persisted to a file between runs (`--scram-cache`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::{Digest, Sha1};

type HmacSha1 = Hmac<Sha1>;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 20] {
    // HMAC takes keys of any length.
    let mut mac = <HmacSha1 as hmac::digest::KeyInit>::new_from_slice(key)
        .expect("hmac accepts any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// (iterations, salt, password) → SaltedPassword.
pub struct ScramCache {
    map: Mutex<HashMap<String, [u8; 20]>>,
    loaded: usize,
    path: Option<PathBuf>,
}

impl ScramCache {
    pub fn new(path: Option<PathBuf>) -> Self {
        let mut map = HashMap::new();
        if let Some(p) = &path {
            if let Ok(text) = std::fs::read_to_string(p) {
                for line in text.lines() {
                    let Some((k, v)) = line.rsplit_once(' ') else {
                        continue;
                    };
                    let Ok(bytes) = B64.decode(v) else { continue };
                    if let Ok(arr) = <[u8; 20]>::try_from(bytes.as_slice()) {
                        map.insert(k.to_string(), arr);
                    }
                }
            }
        }
        let loaded = map.len();
        ScramCache {
            map: Mutex::new(map),
            loaded,
            path,
        }
    }

    pub fn loaded(&self) -> usize {
        self.loaded
    }

    fn key(password: &str, salt: &[u8], iterations: u32) -> String {
        let pw = Sha1::digest(password.as_bytes());
        format!("{iterations}:{}:{}", B64.encode(salt), hex(&pw[..8]))
    }

    pub fn salted_password(&self, password: &str, salt: &[u8], iterations: u32) -> [u8; 20] {
        let key = Self::key(password, salt, iterations);
        if let Some(sp) = self.map.lock().ok().and_then(|m| m.get(&key).copied()) {
            return sp;
        }
        let mut sp = [0u8; 20];
        pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut sp);
        if let Ok(mut m) = self.map.lock() {
            m.insert(key, sp);
        }
        sp
    }

    /// Writes the cache back (atomically) if it grew. Errors are reported, not fatal.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let Ok(map) = self.map.lock() else { return };
        if map.len() == self.loaded {
            return;
        }
        let write = |p: &Path| -> std::io::Result<()> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for (k, v) in map.iter() {
                writeln!(f, "{k} {}", B64.encode(v))?;
            }
            f.flush()?;
            drop(f);
            std::fs::rename(&tmp, p)
        };
        if let Err(e) = write(path) {
            eprintln!(
                "warning: could not save the SCRAM cache {}: {e}",
                path.display()
            );
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 5802 §5.1 `saslname`: `=` and `,` are escaped.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// One SCRAM-SHA-1 exchange, client side.
pub struct ScramClient {
    cnonce: String,
    first_bare: String,
    server_signature: Option<[u8; 20]>,
}

impl ScramClient {
    /// Returns the client and the client-first-message (gs2 header included), raw bytes.
    pub fn start(user: &str) -> (Self, Vec<u8>) {
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        let cnonce = B64.encode(raw);
        let first_bare = format!("n={},r={cnonce}", saslname(user));
        let msg = format!("n,,{first_bare}").into_bytes();
        (
            ScramClient {
                cnonce,
                first_bare,
                server_signature: None,
            },
            msg,
        )
    }

    /// Takes the server-first-message, returns the client-final-message.
    pub fn respond(
        &mut self,
        server_first: &[u8],
        password: &str,
        cache: &ScramCache,
    ) -> Result<Vec<u8>> {
        let sf = std::str::from_utf8(server_first)
            .map_err(|_| anyhow!("scram: server-first not UTF-8"))?;
        let (mut nonce, mut salt, mut iters) = (None, None, None);
        for part in sf.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => {
                    salt = Some(B64.decode(v).map_err(|_| anyhow!("scram: bad salt"))?)
                }
                Some(("i", v)) => {
                    iters = Some(
                        v.parse::<u32>()
                            .map_err(|_| anyhow!("scram: bad iteration count"))?,
                    )
                }
                Some(("m", _)) => bail!("scram: unsupported mandatory extension"),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iters)) = (nonce, salt, iters) else {
            bail!("scram: incomplete server-first-message");
        };
        if !nonce.starts_with(&self.cnonce) || nonce.len() == self.cnonce.len() {
            bail!("scram: server nonce does not extend ours");
        }
        if iters == 0 || iters > 1_000_000 {
            bail!("scram: iteration count {iters} out of range");
        }
        let sp = cache.salted_password(password, &salt, iters);
        let client_key = hmac(&sp, b"Client Key");
        let stored_key: [u8; 20] = Sha1::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{sf},{without_proof}", self.first_bare);
        let client_sig = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_sig.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&sp, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (`v=…`): the server proves it knew the keys too.
    pub fn verify(&self, server_final: &[u8]) -> Result<()> {
        let sf = std::str::from_utf8(server_final)
            .map_err(|_| anyhow!("scram: server-final not UTF-8"))?;
        if let Some(e) = sf.strip_prefix("e=") {
            bail!("scram: server error {e}");
        }
        let v = sf
            .strip_prefix("v=")
            .ok_or_else(|| anyhow!("scram: no server signature"))?;
        let v = B64
            .decode(v.split(',').next().unwrap_or_default())
            .map_err(|_| anyhow!("scram: bad server signature"))?;
        match self.server_signature {
            Some(expected) if expected.as_slice() == v.as_slice() => Ok(()),
            _ => bail!("scram: server signature mismatch"),
        }
    }
}

/// RFC 4616 PLAIN message (no authzid).
pub fn plain(user: &str, password: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(user.len() + password.len() + 2);
    m.push(0);
    m.extend_from_slice(user.as_bytes());
    m.push(0);
    m.extend_from_slice(password.as_bytes());
    m
}

/// XEP-0484 / HT-SHA-256-NONE initiator message: `authcid NUL HMAC-SHA-256(token, "Initiator")`.
pub fn ht_sha256_none(user: &str, token: &str) -> Vec<u8> {
    let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(token.as_bytes())
        .expect("hmac accepts any key length");
    mac.update(b"Initiator");
    let mut m = user.as_bytes().to_vec();
    m.push(0);
    m.extend_from_slice(&mac.finalize().into_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5 example exchange.
    #[test]
    fn rfc5802_example() {
        let cache = ScramCache::new(None);
        let mut c = ScramClient {
            cnonce: "fyko+d2lbbFgONRv9qkxdawL".into(),
            first_bare: "n=user,r=fyko+d2lbbFgONRv9qkxdawL".into(),
            server_signature: None,
        };
        let fin = c
            .respond(
                b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                "pencil",
                &cache,
            )
            .expect("respond");
        assert_eq!(
            String::from_utf8(fin).expect("utf8"),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .expect("server signature");
        assert!(c.verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_err());
        // second use hits the cache and gives the same answer
        let fin2 = c
            .respond(
                b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
                "pencil",
                &cache,
            )
            .expect("respond");
        assert!(String::from_utf8(fin2)
            .expect("utf8")
            .ends_with("p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="));
    }

    #[test]
    fn nonce_must_extend_ours() {
        let cache = ScramCache::new(None);
        let (mut c, first) = ScramClient::start("u1");
        assert!(String::from_utf8(first)
            .expect("utf8")
            .starts_with("n,,n=u1,r="));
        assert!(c
            .respond(b"r=other,s=QSXCR+Q6sek8bf92,i=4096", "x", &cache)
            .is_err());
    }

    #[test]
    fn saslname_escapes() {
        assert_eq!(saslname("a=b,c"), "a=3Db=2Cc");
    }
}
