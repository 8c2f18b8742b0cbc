//! Arbitrary bytes through the XMPP stream framer and back out through the writer.
//! Seeds: `fuzz/corpus/xml_framer/`, replayed by kabar-xml's `tests/corpus_replay.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kabar_xml::fuzz::exercise(data);
});
