//! Arbitrary strings through JID parsing (RFC 7622 / stringprep rules of the `jid` crate), the way
//! the server parses every `to`/`from` (`kabar_core::stanza::parse_jid`): a parsed JID must re-parse
//! to itself.
//! Seeds: `fuzz/corpus/jid/`, replayed by kabar-core's `tests/jid_corpus_replay.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(j) = kabar_core::stanza::parse_jid(s) {
            let again = kabar_core::stanza::parse_jid(j.as_str()).expect("a normalised JID re-parses");
            assert_eq!(again, j);
        }
    }
});
