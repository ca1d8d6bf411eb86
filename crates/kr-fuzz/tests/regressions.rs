//! Every input a fuzzer found to crash a target, kept in `regressions/<target>/` and run
//! again here. Each file is named for what it exercises.

use std::path::Path;

#[test]
fn every_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut ran = 0;
    for (name, target) in kr_fuzz::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in dir.flatten() {
            let data = std::fs::read(entry.path()).expect("a regression input");
            eprintln!("{name}: {}", entry.path().display());
            target(&data);
            ran += 1;
        }
    }
    assert!(ran > 0, "no regression inputs under {}", root.display());
}
