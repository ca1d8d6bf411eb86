//! The AFL++ harness: `kr-fuzz-afl TARGET` fuzzes one target of `kr_fuzz::TARGETS`.
//! Build with `cargo afl build --release -p kr-fuzz --features afl`, run with
//! `KR_FUZZ_SCRATCH=/tmp/kr-fuzz-TARGET cargo afl fuzz -t 5000 -i crates/kr-fuzz/corpus/TARGET -o OUT
//! target/release/kr-fuzz-afl TARGET`.

/// The allocator the server binary runs with, so templates meet their memory budget here
/// too.
#[global_allocator]
static ALLOCATOR: kr_model::BudgetedAllocator = kr_model::BudgetedAllocator;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(&(_, target)) = kr_fuzz::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = kr_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: kr-fuzz-afl TARGET; targets: {}", names.join(", "));
        std::process::exit(2);
    };
    // Without afl's abort-on-panic hook: a panic the code itself catches (the tokenizers
    // library's, caught at load) or one confined to a render thread is not a crash of the
    // server, so it must not count as one here; a panic that escapes still aborts.
    afl::fuzz_nohook!(|data: &[u8]| target(data));
}
