//! Replays the fuzz corpus (../../fuzz/corpus/sasl_scram/) through the same
//! driver as the `sasl_scram` fuzz target, so crashes found by fuzzing (and
//! saved there) become regression tests that run on stable Rust.

use std::path::Path;

#[test]
fn fuzz_corpus_sasl_scram_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/sasl_scram");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("readable directory entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("readable corpus file");
            kabar_sasl::fuzz::exercise(&data);
            count += 1;
        }
    }
    assert!(count > 0, "corpus {} is empty", dir.display());
}
