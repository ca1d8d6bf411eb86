//! The kr-serve binary: `serve` runs the HTTP server; `config` prints its settings; `run` generates from a prompt on the
//! terminal; `bench engine|overhead|serve|compare|plot` measure and compare; `models inspect` describes a
//! model file. Errors are printed once, here, with a hint.

mod bench;
mod bench_gpu;
mod cli;
mod error;
mod models;
mod run;
mod serve;

use clap::Parser;
use cli::{BenchCommand, Cli, Command, ModelsCommand};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KR_SERVE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Config(args) => serve::print_config(args),
        Command::Bench {
            command: BenchCommand::Engine(args),
        } => bench::bench_engine(args),
        Command::Bench {
            command: BenchCommand::Overhead(args),
        } => bench::overhead::bench_overhead(args),
        Command::Bench {
            command: BenchCommand::Serve(args),
        } => bench::serve::bench_serve(args),
        Command::Bench {
            command: BenchCommand::Compare(args),
        } => bench::compare::bench_compare(args),
        Command::Bench {
            command: BenchCommand::Plot(args),
        } => bench::plot::bench_plot(args),
        Command::Models {
            command: ModelsCommand::Inspect(args),
        } => models::inspect(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        if let Some(hint) = e.hint() {
            eprintln!("hint: {hint}");
        }
        std::process::exit(e.exit_code());
    }
}
