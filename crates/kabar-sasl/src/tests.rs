//! Unit tests; RFC sections are cited in the test names and comments.

use rand::{Rng, RngCore, SeedableRng};

use crate::*;

const RFC5802_SALT: &str = "QSXCR+Q6sek8bf92";
const RFC7677_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

fn b64d(s: &str) -> Vec<u8> {
    b64_decode(s).expect("test base64")
}

fn creds(hash: ScramHash, password: &str) -> ScramCredentials {
    derive_credentials(hash, password, b"test-salt-16byte", DEFAULT_ITERATIONS).unwrap()
}

/// Minimal SCRAM client, test-only: computes client-final from the
/// server-first-message like a real client would (RFC 5802 §3).
struct TestClient {
    hash: ScramHash,
    password: String,
    gs2_header: String,
    cb_data: Vec<u8>,
    bare: String,
}

impl TestClient {
    fn new(hash: ScramHash, user: &str, password: &str, gs2_header: &str) -> Self {
        TestClient {
            hash,
            password: password.into(),
            gs2_header: gs2_header.into(),
            cb_data: Vec::new(),
            bare: format!("n={user},r=clientnonce0123456789"),
        }
    }

    fn with_cb(mut self, data: &[u8]) -> Self {
        self.cb_data = data.to_vec();
        self
    }

    fn first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.bare).into_bytes()
    }

    /// Returns (client-final-message, expected server-final-message).
    fn finish(&self, server_first: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let sf = std::str::from_utf8(server_first).unwrap();
        let mut it = sf.split(',');
        let nonce = it.next().unwrap().strip_prefix("r=").unwrap();
        let salt = b64d(it.next().unwrap().strip_prefix("s=").unwrap());
        let iters: u32 = it
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        let h = self.hash;
        let salted = h.salted_password(self.password.as_bytes(), &salt, iters);
        let client_key = h.hmac(&salted, &[b"Client Key"]);
        let stored_key = h.digest(&client_key);
        let server_key = h.hmac(&salted, &[b"Server Key"]);
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cb_data);
        let without_proof = format!("c={},r={nonce}", b64_encode(&cbind));
        let auth = format!("{},{sf},{without_proof}", self.bare);
        let sig = h.hmac(&stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_sig = h.hmac(&server_key, &[auth.as_bytes()]);
        (
            format!("{without_proof},p={}", b64_encode(&proof)).into_bytes(),
            format!("v={}", b64_encode(&server_sig)).into_bytes(),
        )
    }
}

/// Runs a whole exchange; returns the client_final result.
fn run(
    mech: Mechanism,
    bindings: &ChannelBindings,
    plus_advertised: bool,
    client: &TestClient,
    stored: Option<&ScramCredentials>,
) -> Result<Vec<u8>, SaslError> {
    let mut server = ScramServer::new(mech, bindings, plus_advertised)?;
    server.client_first(&client.first())?;
    let sf = server.server_first(stored)?;
    let (cf, expected_v) = client.finish(&sf);
    let v = server.client_final(&cf)?;
    assert_eq!(
        v, expected_v,
        "server signature must match the client's expectation"
    );
    Ok(v)
}

fn both_bindings() -> ChannelBindings {
    ChannelBindings {
        tls_exporter: Some(vec![0xAA; 32]),
        tls_server_end_point: Some(vec![0xBB; 32]),
    }
}

#[test]
fn rfc5802_s5_scram_sha1_example_vector() {
    let stored = derive_credentials(ScramHash::Sha1, "pencil", &b64d(RFC5802_SALT), 4096).unwrap();
    let mut server =
        ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
    server.set_server_nonce("3rfcNHYJY1ZVvWVs7j");
    let cf = server
        .client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
        .unwrap();
    assert_eq!(
        cf,
        ClientFirst {
            username: "user".into(),
            authzid: None
        }
    );
    let sf = server.server_first(Some(&stored)).unwrap();
    assert_eq!(
        sf,
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    );
    let v = server
        .client_final(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        )
        .unwrap();
    assert_eq!(v, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

#[test]
fn rfc7677_s3_scram_sha256_example_vector() {
    let stored =
        derive_credentials(ScramHash::Sha256, "pencil", &b64d(RFC7677_SALT), 4096).unwrap();
    let mut server =
        ScramServer::new(Mechanism::ScramSha256, &ChannelBindings::default(), false).unwrap();
    server.set_server_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    server
        .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        .unwrap();
    let sf = server.server_first(Some(&stored)).unwrap();
    assert_eq!(
        sf,
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    let v = server
        .client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .unwrap();
    assert_eq!(v, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

#[test]
fn rfc5802_s5_test_client_helper_reproduces_example_proof() {
    // Validates the helper the other tests rely on against the RFC vector.
    let client = TestClient {
        hash: ScramHash::Sha1,
        password: "pencil".into(),
        gs2_header: "n,,".into(),
        cb_data: Vec::new(),
        bare: "n=user,r=fyko+d2lbbFgONRv9qkxdawL".into(),
    };
    let (cf, v) =
        client.finish(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
    assert_eq!(
        cf,
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    );
    assert_eq!(v, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=");
}

#[test]
fn rfc5802_s5_1_successful_exchange_both_hashes() {
    for (mech, hash) in [
        (Mechanism::ScramSha1, ScramHash::Sha1),
        (Mechanism::ScramSha256, ScramHash::Sha256),
    ] {
        let client = TestClient::new(hash, "juliet", "r0m30myr0m30", "n,,");
        let stored = creds(hash, "r0m30myr0m30");
        run(
            mech,
            &ChannelBindings::default(),
            false,
            &client,
            Some(&stored),
        )
        .unwrap();
    }
}

#[test]
fn rfc5802_s5_1_wrong_password_is_not_authorized_rfc6120_s6_5_10() {
    let client = TestClient::new(ScramHash::Sha256, "juliet", "wrong", "n,,");
    let stored = creds(ScramHash::Sha256, "right");
    let err = run(
        Mechanism::ScramSha256,
        &ChannelBindings::default(),
        false,
        &client,
        Some(&stored),
    );
    assert_eq!(err, Err(SaslError::NotAuthorized));
    assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
}

#[test]
fn rfc5802_s9_unknown_user_looks_like_known_user_and_fails_not_authorized() {
    let shape = |sf: &[u8]| {
        let s = std::str::from_utf8(sf).unwrap().to_owned();
        let parts: Vec<String> = s.split(',').map(str::to_owned).collect();
        assert_eq!(parts.len(), 3);
        (
            parts[0].len(),
            b64d(&parts[1][2..]).len(),
            parts[2].clone(),
            parts[1].clone(),
        )
    };
    let first = |user: &str, stored: Option<&ScramCredentials>| {
        let mut s =
            ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
        s.client_first(format!("n,,n={user},r=abcdefghijklmnop").as_bytes())
            .unwrap();
        (s.server_first(stored).unwrap(), s)
    };
    let real = new_credentials(ScramHash::Sha1, "pw", DEFAULT_ITERATIONS).unwrap();
    let (known_sf, _) = first("known", Some(&real));
    let (ghost_sf, _) = first("ghost", None);
    let (k, g) = (shape(&known_sf), shape(&ghost_sf));
    assert_eq!(
        (k.0, k.1, &k.2),
        (g.0, g.1, &g.2),
        "same nonce length, salt length, iterations"
    );
    // A real user's salt is stable across attempts; so must the fake one be.
    let (ghost_again, _) = first("ghost", None);
    assert_eq!(g.3, shape(&ghost_again).3);
    let (other, _) = first("other-ghost", None);
    assert_ne!(g.3, shape(&other).3);
    // Any password, including one the fake keys might be thought to match.
    let client = TestClient::new(ScramHash::Sha1, "ghost", "pw", "n,,");
    assert_eq!(
        run(
            Mechanism::ScramSha1,
            &ChannelBindings::default(),
            false,
            &client,
            None
        ),
        Err(SaslError::NotAuthorized)
    );
}

#[test]
fn rfc9266_tls_exporter_plus_succeeds() {
    let b = both_bindings();
    let client =
        TestClient::new(ScramHash::Sha256, "romeo", "pw", "p=tls-exporter,,").with_cb(&[0xAA; 32]);
    let stored = creds(ScramHash::Sha256, "pw");
    run(Mechanism::ScramSha256Plus, &b, true, &client, Some(&stored)).unwrap();
    let mut s = ScramServer::new(Mechanism::ScramSha256Plus, &b, true).unwrap();
    s.client_first(&client.first()).unwrap();
    assert_eq!(s.channel_binding(), Some(ChannelBindingType::TlsExporter));
}

#[test]
fn rfc5929_tls_server_end_point_plus_succeeds() {
    let b = ChannelBindings {
        tls_exporter: None,
        tls_server_end_point: Some(vec![0xBB; 32]),
    };
    let client = TestClient::new(ScramHash::Sha1, "romeo", "pw", "p=tls-server-end-point,,")
        .with_cb(&[0xBB; 32]);
    let stored = creds(ScramHash::Sha1, "pw");
    run(Mechanism::ScramSha1Plus, &b, true, &client, Some(&stored)).unwrap();
}

#[test]
fn rfc5802_s6_mismatched_cb_data_is_not_authorized() {
    let stored = creds(ScramHash::Sha256, "pw");
    // A MITM terminating TLS sees different binding data than the client.
    let client =
        TestClient::new(ScramHash::Sha256, "romeo", "pw", "p=tls-exporter,,").with_cb(&[0xCC; 32]);
    assert_eq!(
        run(
            Mechanism::ScramSha256Plus,
            &both_bindings(),
            true,
            &client,
            Some(&stored)
        ),
        Err(SaslError::NotAuthorized)
    );
    // Binding data of the other type does not count either.
    let client =
        TestClient::new(ScramHash::Sha256, "romeo", "pw", "p=tls-exporter,,").with_cb(&[0xBB; 32]);
    assert_eq!(
        run(
            Mechanism::ScramSha256Plus,
            &both_bindings(),
            true,
            &client,
            Some(&stored)
        ),
        Err(SaslError::NotAuthorized)
    );
    // c= must also cover the gs2 header for non-PLUS ("n,," vs "y,,").
    let mut s = ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
    let client = TestClient::new(ScramHash::Sha1, "romeo", "pw", "y,,");
    s.client_first(&client.first()).unwrap();
    let sf = s.server_first(Some(&creds(ScramHash::Sha1, "pw"))).unwrap();
    let (cf, _) = TestClient::new(ScramHash::Sha1, "romeo", "pw", "n,,").finish(&sf);
    assert_eq!(s.client_final(&cf), Err(SaslError::NotAuthorized));
}

#[test]
fn rfc5802_s6_y_flag_downgrade_refused_when_plus_advertised() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, &both_bindings(), true).unwrap();
    assert_eq!(
        s.client_first(b"y,,n=user,r=abcdef"),
        Err(SaslError::NotAuthorized)
    );
}

#[test]
fn rfc5802_s6_y_flag_accepted_when_plus_not_advertised() {
    let client = TestClient::new(ScramHash::Sha256, "user", "pw", "y,,");
    let stored = creds(ScramHash::Sha256, "pw");
    run(
        Mechanism::ScramSha256,
        &ChannelBindings::default(),
        false,
        &client,
        Some(&stored),
    )
    .unwrap();
}

#[test]
fn rfc5802_s6_p_flag_with_non_plus_mechanism_rejected() {
    let mut s = ScramServer::new(Mechanism::ScramSha256, &both_bindings(), true).unwrap();
    assert_eq!(
        s.client_first(b"p=tls-exporter,,n=user,r=abcdef"),
        Err(SaslError::MalformedRequest)
    );
}

#[test]
fn rfc5802_s6_plus_requires_p_flag_with_available_type() {
    let only_endpoint = ChannelBindings {
        tls_exporter: None,
        tls_server_end_point: Some(vec![1; 32]),
    };
    for msg in [
        &b"n,,n=user,r=abcdef"[..],
        b"y,,n=user,r=abcdef",
        b"p=tls-unique,,n=user,r=abcdef",
        b"p=tls-exporter,,n=user,r=abcdef",
        b"p=,,n=user,r=abcdef",
    ] {
        let mut s = ScramServer::new(Mechanism::ScramSha1Plus, &only_endpoint, true).unwrap();
        assert_eq!(
            s.client_first(msg),
            Err(SaslError::MalformedRequest),
            "{:?}",
            String::from_utf8_lossy(msg)
        );
    }
    // Empty data is no data.
    let empty = ChannelBindings {
        tls_exporter: Some(Vec::new()),
        tls_server_end_point: None,
    };
    assert_eq!(empty.available(), vec![]);
    assert_eq!(
        ScramServer::new(Mechanism::ScramSha1Plus, &empty, true).unwrap_err(),
        SaslError::InvalidMechanism
    );
}

#[test]
fn rfc6120_s6_5_7_plain_is_not_a_scram_mechanism() {
    assert_eq!(
        ScramServer::new(Mechanism::Plain, &ChannelBindings::default(), false).unwrap_err(),
        SaslError::InvalidMechanism
    );
}

#[test]
fn rfc5802_s5_1_rejects_mandatory_extension() {
    for msg in [
        &b"n,,m=ext,n=user,r=abcdef"[..],
        b"n,,n=user,r=abcdef,m=ext",
    ] {
        let mut s =
            ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
        assert_eq!(s.client_first(msg), Err(SaslError::MalformedRequest));
    }
    // An optional extension is ignored.
    let mut s = ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
    assert!(s.client_first(b"n,,n=user,r=abcdef,x=ext").is_ok());
}

#[test]
fn rfc5802_s7_malformed_client_first_rejected() {
    let bad: &[&[u8]] = &[
        b"",
        b"n",
        b"n,",
        b"n,,",
        b"x,,n=user,r=abc",
        b"N,,n=user,r=abc",
        b"n,,n=user",
        b"n,,n=user,r=",
        b"n,,n=user,r=ab,c",
        b"n,,n=user,r=ab c",
        b"n,,n=user,r=ab\xc3\xa9",
        b"n,,n=,r=abc",
        b"n,,r=abc,n=user",
        b"n,,n=us=er,r=abc",
        b"n,,n=us=2c,r=abc",
        b"n,,n=us\0er,r=abc",
        b"n,,n=\xff\xfe,r=abc",
        b"n,x,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"n,,n=user,r=abc,",
        b"n,,n=user,r=abc,x=",
        b"n,,n=user,r=abc,1=x",
        b"n,,n=user,r=abc,r=again",
        b"n,,n=a\x07b,r=abc",
        b"n,,n=\xc2\xad,r=abc",
        b",,n=user,r=abc",
    ];
    for msg in bad {
        let mut s =
            ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
        assert_eq!(
            s.client_first(msg),
            Err(SaslError::MalformedRequest),
            "{:?}",
            String::from_utf8_lossy(msg)
        );
    }
}

#[test]
fn rfc5802_s5_1_username_and_authzid_unescaped_and_username_saslprepped() {
    let mut s = ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
    let cf = s
        .client_first("n,a=juliet=2C=3Dx@example.com,n=a=2Cb=3Dc\u{00AD}\u{2002}d,r=abc".as_bytes())
        .unwrap();
    // RFC 4013 §2: U+00AD maps to nothing, U+2002 to a space.
    assert_eq!(cf.username, "a,b=c d");
    assert_eq!(cf.authzid.as_deref(), Some("juliet,=x@example.com"));
    assert_eq!(s.username(), Some("a,b=c d"));
    assert_eq!(s.authzid(), Some("juliet,=x@example.com"));
}

#[test]
fn rfc5802_s7_malformed_client_final_rejected() {
    let templates = [
        "",
        "c=biws",
        "c=biws,r=NONCE",
        "c=biws,r=NONCE,p=",
        "c=biws,r=NONCE,p=!!!!",
        "c=biws,r=NONCE,p=AAAA",
        "r=NONCE,c=biws,p=PROOF",
        "c=bi*s,r=NONCE,p=PROOF",
        "c=biws,r=NONCE,m=x,p=PROOF",
        "c=biws,r=NONCE,p=PROOF,x=y",
        "c=biws,r=NONCE,p=PROOF,p=PROOF",
        "c=biws,,r=NONCE,p=PROOF",
        "c=biws,r=NONCE,p=PROOF\u{FFFF}INVALID",
    ];
    let stored = creds(ScramHash::Sha1, "pw");
    for template in templates {
        let mut s =
            ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
        s.client_first(b"n,,n=user,r=abc").unwrap();
        let sf = String::from_utf8(s.server_first(Some(&stored)).unwrap()).unwrap();
        let nonce = sf.split(',').next().unwrap().strip_prefix("r=").unwrap();
        let msg = template
            .replace("NONCE", nonce)
            .replace("PROOF", &b64_encode(&[0u8; 20]));
        // The last template stands for invalid UTF-8 after a valid prefix.
        let bytes = match msg.split_once("\u{FFFF}INVALID") {
            Some((head, _)) => [head.as_bytes(), &b"\xff"[..]].concat(),
            None => msg.into_bytes(),
        };
        assert_eq!(
            s.client_final(&bytes),
            Err(SaslError::MalformedRequest),
            "{template}"
        );
    }
}

#[test]
fn rfc5802_s5_1_nonce_mismatch_is_not_authorized() {
    let stored = creds(ScramHash::Sha1, "pw");
    let client = TestClient::new(ScramHash::Sha1, "user", "pw", "n,,");
    let mut s = ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
    s.client_first(&client.first()).unwrap();
    let sf = s.server_first(Some(&stored)).unwrap();
    // Client proves the password over a different nonce (e.g. a replay).
    let forged = String::from_utf8(sf)
        .unwrap()
        .replacen("r=clientnonce", "r=Xlientnonce", 1);
    let (cf, _) = client.finish(forged.as_bytes());
    assert_eq!(s.client_final(&cf), Err(SaslError::NotAuthorized));
}

#[test]
fn rfc5802_s5_1_server_nonce_is_fresh_printable_and_long() {
    let nonce = |_| {
        let mut s =
            ScramServer::new(Mechanism::ScramSha256, &ChannelBindings::default(), false).unwrap();
        s.client_first(b"n,,n=user,r=C").unwrap();
        let sf = String::from_utf8(s.server_first(None).unwrap()).unwrap();
        sf.split(',')
            .next()
            .unwrap()
            .strip_prefix("r=C")
            .unwrap()
            .to_owned()
    };
    let nonces: Vec<String> = (0..20).map(nonce).collect();
    for n in &nonces {
        assert!(b64d(n).len() >= 18);
        assert!(n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','));
    }
    let unique: std::collections::HashSet<_> = nonces.iter().collect();
    assert_eq!(unique.len(), nonces.len());
}

#[test]
fn rfc6120_s6_4_out_of_order_and_repeated_steps_error_without_panicking() {
    let stored = creds(ScramHash::Sha1, "pw");
    let new =
        || ScramServer::new(Mechanism::ScramSha1, &ChannelBindings::default(), false).unwrap();
    let mut s = new();
    assert!(s.server_first(Some(&stored)).is_err());
    let mut s = new();
    assert!(s.client_final(b"c=biws,r=a,p=AAAA").is_err());
    let mut s = new();
    s.client_first(b"n,,n=user,r=abc").unwrap();
    assert!(s.client_first(b"n,,n=user,r=abc").is_err());
    assert!(
        s.server_first(Some(&stored)).is_err(),
        "an error ends the exchange"
    );
    // After success nothing more is accepted.
    let client = TestClient::new(ScramHash::Sha1, "user", "pw", "n,,");
    let mut s = new();
    s.client_first(&client.first()).unwrap();
    let sf = s.server_first(Some(&stored)).unwrap();
    let (cf, _) = client.finish(&sf);
    s.client_final(&cf).unwrap();
    assert_eq!(s.client_final(&cf), Err(SaslError::MalformedRequest));
    assert!(s.client_first(&client.first()).is_err());
}

#[test]
fn rfc4616_s2_plain_parse_edge_cases() {
    let ok = parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
    assert_eq!(
        (ok.authzid, ok.authcid.as_str(), ok.password.as_str()),
        (None, "tim", "tanstaaftanstaaf")
    );
    let ok = parse_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap();
    assert_eq!(ok.authzid.as_deref(), Some("Ursel"));
    // RFC 4013 §3 examples: soft hyphen maps to nothing, U+00AA → "a".
    assert_eq!(
        parse_plain("\0I\u{00AD}X\0\u{00AA}".as_bytes())
            .unwrap()
            .authcid,
        "IX"
    );
    assert_eq!(
        parse_plain("\0u\0\u{00AA}".as_bytes()).unwrap().password,
        "a"
    );
    for bad in [
        &b""[..],
        b"\0",
        b"\0\0",
        b"\0user\0",
        b"\0\0pass",
        b"user\0pass",
        b"a\0user\0pass\0",
        b"\0user\0pa\xffss",
        b"\0user\0\x07",
        "\0user\0\u{00AD}".as_bytes(),
    ] {
        assert_eq!(
            parse_plain(bad),
            Err(SaslError::MalformedRequest),
            "{bad:?}"
        );
    }
    assert!(!format!("{:?}", parse_plain(b"\0u\0secret").unwrap()).contains("secret"));
}

#[test]
fn rfc4616_plain_verified_against_scram_credentials() {
    for hash in [ScramHash::Sha1, ScramHash::Sha256] {
        let stored = new_credentials(hash, "I\u{00AD}X", 64).unwrap();
        assert!(
            verify_plain("IX", Some(&stored), hash),
            "SASLprep on both sides"
        );
        assert!(verify_plain("I\u{00AD}X", Some(&stored), hash));
        assert!(!verify_plain("ix", Some(&stored), hash));
        assert!(!verify_plain("", Some(&stored), hash));
        assert!(
            !verify_plain("IX", None, hash),
            "unknown user never verifies"
        );
    }
}

#[test]
fn rfc4013_invalid_passwords_refused_by_derive_credentials() {
    for pw in ["", "\u{0007}", "\u{00AD}", "a\u{202E}b"] {
        assert_eq!(
            derive_credentials(ScramHash::Sha1, pw, b"s", 1),
            Err(SaslError::MalformedRequest)
        );
    }
    assert_eq!(
        derive_credentials(ScramHash::Sha1, "pw", b"s", 0),
        Err(SaslError::MalformedRequest)
    );
    let a = new_credentials(ScramHash::Sha256, "pw", 1).unwrap();
    let b = new_credentials(ScramHash::Sha256, "pw", 1).unwrap();
    assert_eq!(
        (a.salt.len(), a.stored_key.len(), a.server_key.len()),
        (16, 32, 32)
    );
    assert_ne!(a.salt, b.salt, "salts are random");
}

#[test]
fn rfc6120_s6_5_condition_names() {
    let all = [
        (SaslError::Aborted, "aborted"),
        (SaslError::AccountDisabled, "account-disabled"),
        (SaslError::CredentialsExpired, "credentials-expired"),
        (SaslError::EncryptionRequired, "encryption-required"),
        (SaslError::IncorrectEncoding, "incorrect-encoding"),
        (SaslError::InvalidAuthzid, "invalid-authzid"),
        (SaslError::InvalidMechanism, "invalid-mechanism"),
        (SaslError::MalformedRequest, "malformed-request"),
        (SaslError::MechanismTooWeak, "mechanism-too-weak"),
        (SaslError::NotAuthorized, "not-authorized"),
        (SaslError::TemporaryAuthFailure, "temporary-auth-failure"),
    ];
    for (e, name) in all {
        assert_eq!(e.condition(), name);
    }
}

#[test]
fn rfc5802_rfc7677_mechanism_and_rfc9266_binding_names_round_trip() {
    for m in Mechanism::ALL {
        assert_eq!(Mechanism::from_name(m.name()), Some(m));
        assert_eq!(m.is_plus(), m.name().ends_with("-PLUS"));
        assert_eq!(m.hash().is_none(), m == Mechanism::Plain);
    }
    assert_eq!(Mechanism::ScramSha1Plus.name(), "SCRAM-SHA-1-PLUS");
    assert_eq!(Mechanism::from_name("scram-sha-1"), None);
    for t in ChannelBindingType::ALL {
        assert_eq!(ChannelBindingType::from_name(t.name()), Some(t));
    }
    assert_eq!(
        ChannelBindingType::TlsServerEndPoint.name(),
        "tls-server-end-point"
    );
    assert_eq!(ChannelBindingType::from_name("tls-unique"), None);
    assert_eq!(
        both_bindings().available(),
        ChannelBindingType::ALL.to_vec()
    );
}

#[test]
fn garbage_and_mutated_messages_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5a51);
    let seeds: [&[u8]; 4] = [
        b"\x83n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL\nc=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        b"\xd0p=tls-exporter,a=x=2Cy,n=user,r=abc,x=1\nc=cD10bHMtZXhwb3J0ZXIsLA==,r=abc,p=AAAA",
        b"\x04a\0user\0pencil",
        b"\x42y,,n=user,r=abc\nc=eSws,r=abc,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ];
    for i in 0..3000 {
        let data = if i % 2 == 0 {
            let mut buf = vec![0u8; rng.random_range(0..96)];
            rng.fill_bytes(&mut buf);
            // Bias towards the interesting alphabet so parsers get further.
            for b in buf.iter_mut().filter(|_| rng.random_bool(0.5)) {
                *b = b"nyp=,ar\0cmi2C3D\nAB+/"[usize::from(*b) % 20];
            }
            buf
        } else {
            let mut buf = seeds[i % seeds.len()].to_vec();
            for _ in 0..rng.random_range(1..4) {
                let pos = rng.random_range(0..buf.len());
                match rng.random_range(0..3) {
                    0 => buf[pos] = rng.random(),
                    1 => {
                        buf.remove(pos);
                    }
                    _ => buf.insert(pos, rng.random()),
                }
            }
            buf
        };
        crate::fuzz::exercise(&data);
    }
}

/// The resumable derivation gives exactly the one-shot result, whatever the slice size: RFC 5802 §5
/// (SCRAM-SHA-1) and RFC 7677 §3 (SCRAM-SHA-256) vectors.
#[test]
fn rfc5802_rfc7677_resumable_derivation_matches_one_shot_in_any_slices() {
    for (hash, salt) in [(ScramHash::Sha1, b64d(RFC5802_SALT)), (ScramHash::Sha256, b64d(RFC7677_SALT))] {
        let want = derive_credentials(hash, "pencil", &salt, 4096).unwrap();
        for slice in [1, 7, 256, 4095, 4096, u32::MAX] {
            let mut d = crate::Derivation::new(hash, "pencil", &salt, 4096).unwrap();
            let mut steps = 0;
            while !d.step(slice) {
                steps += 1;
                assert!(steps <= 4096, "the derivation ends");
            }
            assert_eq!(d.finish(), want, "{hash:?} in slices of {slice}");
        }
    }
    assert!(crate::Derivation::new(ScramHash::Sha256, "pencil", b"salt", 0).is_err());
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// RFC 6070 PBKDF2-HMAC-SHA1 vectors and the RFC 7914 §11 PBKDF2-HMAC-SHA256 ones, through the
/// hand-rolled `Hi` loop (one output block, so the vectors' first digest-length bytes).
#[test]
fn rfc6070_rfc7914_pbkdf2_vectors_through_hi() {
    let sha1 = [
        ("password", "salt", 1, "0c60c80f961f0e71f3a9b524af6012062fe037a6"),
        ("password", "salt", 2, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"),
        ("password", "salt", 4096, "4b007901b765489abead49d926f721d065a429c1"),
        ("passwordPASSWORDpassword", "saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, "3d2eec4fe41c849b80c8d83662c0e44a8b291a96"),
        // dkLen 16 in RFC 6070: compare the prefix.
        ("pass\0word", "sa\0lt", 4096, "56fa6aa75548099dcc37d7f03425e0c3"),
    ];
    for (p, s, c, want) in sha1 {
        let got = crate::hi::hi::<crate::hi::Sha1Md>(p.as_bytes(), s.as_bytes(), c);
        assert_eq!(got[..want.len() / 2], hex(want)[..], "SHA-1 {p:?} {s:?} {c}");
    }
    let sha256 = [
        ("passwd", "salt", 1, "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"),
        ("Password", "NaCl", 80000, "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"),
    ];
    for (p, s, c, want) in sha256 {
        let got = crate::hi::hi::<crate::hi::Sha256Md>(p.as_bytes(), s.as_bytes(), c);
        assert_eq!(got, hex(want), "SHA-256 {p:?} {s:?} {c}");
    }
}

/// The hand-rolled `Hi` equals the `pbkdf2` crate's generic PBKDF2-HMAC for keys and salts around
/// the HMAC block size (keys over 64 bytes are hashed first, RFC 2104 §2; salts that push the
/// first message's padding into a second block) and for iteration counts 1..=3 and 4096.
#[test]
fn rfc8018_5_2_hi_matches_reference_pbkdf2_across_block_boundaries() {
    for key_len in [1, 20, 55, 56, 63, 64, 65, 100, 200] {
        for salt_len in [0, 1, 16, 51, 52, 55, 56, 59, 60, 64, 120, 200] {
            for c in [1, 2, 3, 4096] {
                if c == 4096 && (key_len % 5 != 0 || salt_len % 4 != 0) {
                    continue; // the long count only on a subset, to keep the test fast in debug builds
                }
                let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
                let salt: Vec<u8> = (0..salt_len).map(|i| (i * 13 + 1) as u8).collect();
                let mut want1 = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(&key, &salt, c, &mut want1);
                assert_eq!(crate::hi::hi::<crate::hi::Sha1Md>(&key, &salt, c), want1, "SHA-1 {key_len}/{salt_len}/{c}");
                let mut want256 = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(&key, &salt, c, &mut want256);
                assert_eq!(
                    crate::hi::hi::<crate::hi::Sha256Md>(&key, &salt, c),
                    want256,
                    "SHA-256 {key_len}/{salt_len}/{c}"
                );
            }
        }
    }
}

/// Deriving an account's two key sets in lockstep (`step_pair`, as registration does) gives the
/// RFC 5802 §5 / RFC 7677 §3 results of each derived alone, for any slice size, and also when the
/// two iteration counts differ (the longer one finishes alone).
#[test]
fn rfc5802_rfc7677_lockstep_pair_derivation_matches_one_shot() {
    let (salt1, salt256) = (b64d(RFC5802_SALT), b64d(RFC7677_SALT));
    let want1 = derive_credentials(ScramHash::Sha1, "pencil", &salt1, 4096).unwrap();
    let want256 = derive_credentials(ScramHash::Sha256, "pencil", &salt256, 4096).unwrap();
    for slice in [1, 7, 256, 4096, u32::MAX] {
        let mut a = crate::Derivation::new(ScramHash::Sha1, "pencil", &salt1, 4096).unwrap();
        let mut b = crate::Derivation::new(ScramHash::Sha256, "pencil", &salt256, 4096).unwrap();
        let mut steps = 0;
        while !crate::step_pair(&mut a, &mut b, slice) {
            steps += 1;
            assert!(steps <= 4096, "the pair derivation ends");
        }
        assert_eq!((a.finish(), b.finish()), (want1.clone(), want256.clone()), "slices of {slice}");
    }
    for (n1, n2) in [(4096, 5000), (5000, 4096), (1, 4096)] {
        let mut a = crate::Derivation::new(ScramHash::Sha256, "pencil", &salt256, n1).unwrap();
        let mut b = crate::Derivation::new(ScramHash::Sha256, "pencil", &salt1, n2).unwrap();
        while !crate::step_pair(&mut a, &mut b, 300) {}
        assert_eq!(a.finish(), derive_credentials(ScramHash::Sha256, "pencil", &salt256, n1).unwrap());
        assert_eq!(b.finish(), derive_credentials(ScramHash::Sha256, "pencil", &salt1, n2).unwrap());
    }
}
