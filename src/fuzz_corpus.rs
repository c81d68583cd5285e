//! The committed fuzz corpus (`fuzz/corpus/TARGET/`), replayed by the unit tests of the fuzz
//! harnesses that live in this crate (`wire/voxd/fuzz.rs`, `http/transcribe/fuzz.rs`). voxd-core
//! replays its `session` target the same way.

use std::path::PathBuf;

/// Runs `body` on every corpus file of `target`, in name order, naming the file that fails. An
/// empty or missing corpus fails: the replay must not pass by finding nothing.
pub(crate) fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{target}: {} fails", path.display());
        }
    }
}
