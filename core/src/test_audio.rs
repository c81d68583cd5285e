//! Test audio: the repository's committed speech fixtures and noise corpus, 16 kHz mono PCM16.

use std::path::PathBuf;

fn read(path: PathBuf) -> Vec<i16> {
    let mut r = hound::WavReader::open(&path)
        .unwrap_or_else(|e| panic!("cannot read the fixture {}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels),
        (16_000, 1),
        "{}",
        path.display()
    );
    r.samples::<i16>().map(Result::unwrap).collect()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A speech fixture (`fixtures/NAME`).
pub(crate) fn fixture(name: &str) -> Vec<i16> {
    read(fixtures().join(name))
}

/// A file of the noise corpus (`fixtures/noise/NAME`).
pub(crate) fn noise(name: &str) -> Vec<i16> {
    read(fixtures().join("noise").join(name))
}
