//! Records the git commit HEAD pointed at when the binary was built (`KR_BUILD_COMMIT`), so a
//! benchmark run on another machine, whose checkout may be stale or absent, reports which
//! code actually ran. Reruns when HEAD or a branch moves; "unknown" outside a git checkout.
//! Also marks the tests that need the real models as ignored when they are absent (see
//! tests/support/models_cfg.rs).

use std::process::Command;

include!("../../tests/support/models_cfg.rs");

fn main() {
    declare_test_models_cfg();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KR_BUILD_COMMIT={commit}");
    match git(&["rev-parse", "--absolute-git-dir"]) {
        Some(dir) => {
            for path in ["HEAD", "refs/heads", "packed-refs"] {
                println!("cargo:rerun-if-changed={dir}/{path}");
            }
        }
        None => println!("cargo:rerun-if-changed=build.rs"),
    }
}
