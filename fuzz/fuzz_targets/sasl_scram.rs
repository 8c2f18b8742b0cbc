//! Arbitrary bytes through the SCRAM state machine and the PLAIN parser.
//! Input layout is documented in `kabar_sasl::fuzz`; seeds live in
//! `fuzz/corpus/sasl_scram/` and are replayed by kabar-sasl's
//! `tests/corpus_replay.rs` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kabar_sasl::fuzz::exercise(data);
});
