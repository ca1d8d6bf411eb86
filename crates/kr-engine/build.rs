//! Marks the tests that need the real models as ignored when they are absent (see
//! tests/support/models_cfg.rs).

include!("../../tests/support/models_cfg.rs");

fn main() {
    declare_test_models_cfg();
}
