// The build-script half of `test_models.rs`, `include!`d by the build.rs of every crate
// whose tests need the real models: it sets `cfg(no_test_models)` when the SmolLM2 GGUF is
// not where the tests look (`$KR_TEST_MODELS`, else `../shared/models` beside the
// checkout), so those tests are reported as ignored, not passed.

fn declare_test_models_cfg() {
    use std::path::{Path, PathBuf};
    println!("cargo::rustc-check-cfg=cfg(no_test_models)");
    println!("cargo:rerun-if-env-changed=KR_TEST_MODELS");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let root = Path::new(&manifest).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let dir = match std::env::var_os("KR_TEST_MODELS") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.parent().map_or(root.join("../shared/models"), |p| p.join("shared/models")),
    };
    let probe: PathBuf = dir.join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    // Rerun when the file appears or goes: watch it, or the nearest folder above it that exists.
    let watched = probe.ancestors().find(|p| p.exists()).unwrap_or(&root);
    println!("cargo:rerun-if-changed={}", watched.display());
    if !probe.exists() {
        println!("cargo:rustc-cfg=no_test_models");
    }
}
