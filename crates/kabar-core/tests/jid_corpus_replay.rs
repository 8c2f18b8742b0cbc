//! Replays `fuzz/corpus/jid/` the way the `jid` fuzz target does: parsing never panics and a
//! normalised JID parses back to itself (RFC 7622 idempotence), so addresses the router stamps
//! and compares are stable. `regress-domain-idempotence` is the fuzzing find that the `jid` crate
//! alone is not idempotent (U+03F9), which `kabar_core::stanza::parse_jid` corrects.

use std::path::Path;

#[test]
fn fuzz_corpus_jid_parses_idempotently() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/jid");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("readable directory entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        if let Ok(s) = std::str::from_utf8(&data) {
            if let Ok(j) = kabar_core::stanza::parse_jid(s) {
                let again = kabar_core::stanza::parse_jid(j.as_str()).expect("normalised JID re-parses");
                assert_eq!(again, j, "{}", path.display());
            }
        }
        count += 1;
    }
    assert!(count > 0);
}
