//! Replays the fuzz corpus (../../fuzz/corpus/xml_framer/) through the same driver as the
//! `xml_framer` fuzz target, so inputs found by fuzzing become regression tests on stable Rust.

use std::path::Path;

#[test]
fn fuzz_corpus_xml_framer_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/xml_framer");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("readable directory entry").path();
        if path.is_file() {
            kabar_xml::fuzz::exercise(&std::fs::read(&path).expect("readable corpus file"));
            count += 1;
        }
    }
    assert!(count > 0, "corpus {} is empty", dir.display());
}
