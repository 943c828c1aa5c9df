//! Replays the C API fuzz targets' regression corpus (`fuzz/corpus/<target>/`, kept small by
//! `scripts/fuzz.sh`'s merge step) through the same bodies cargo-fuzz runs
//! (`fuzz/src/bodies.rs`), in the normal test suite: every input must pass its checks.
#[path = "../fuzz/src/bodies.rs"]
mod bodies;

use std::path::PathBuf;

#[test]
fn replay_regression_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, body) in bodies::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        assert!(
            !files.is_empty(),
            "no regression corpus for {name} in {}",
            dir.display()
        );
        for f in &files {
            let data = std::fs::read(f).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| body(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{name}: {} fails: {msg}", f.display());
            }
        }
        eprintln!("{name}: {} inputs replayed", files.len());
        total += files.len();
    }
    eprintln!("{total} corpus inputs replayed");
}
