//! The kr-serve binary: `serve` runs the HTTP server; `config` prints its settings; `run` generates from a prompt on the
//! terminal; `bench engine|overhead|serve|compare|plot` measure and compare; `models inspect` describes a
//! model file. Errors are printed once, here, with a hint.

mod bench;
mod cli;
mod error;
mod models;
mod pull;
mod run;
mod serve;
mod settings;
mod template_sandbox;

use clap::{CommandFactory, FromArgMatches};

/// Chat templates render under a memory budget this allocator enforces (kr_model's
/// `template_budget`); every other thread is charged nothing.
#[global_allocator]
static ALLOCATOR: kr_engine::BudgetedAllocator = kr_engine::BudgetedAllocator;
use cli::{BenchCommand, Cli, Command, ModelsCommand};

fn main() {
    if std::env::args().nth(1).as_deref() == Some(template_sandbox::SUBCOMMAND) {
        template_sandbox::child_main();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KR_SERVE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The config keys given as flags, the env and the config file: resolved by the commands
    // that load a model.
    let inputs = settings::inputs(settings::leaf(&matches));
    let result = match cli.command {
        Command::Run(args) => run::run(args, &inputs),
        Command::Serve(args) => serve::serve(args, inputs),
        Command::Config(args) => serve::print_config(args, &inputs),
        Command::Bench {
            command: BenchCommand::Engine(args),
        } => bench::bench_engine(args, &inputs),
        Command::Bench {
            command: BenchCommand::Overhead(args),
        } => bench::overhead::bench_overhead(args, &inputs),
        Command::Bench {
            command: BenchCommand::Serve(args),
        } => bench::serve::bench_serve(args),
        Command::Bench {
            command: BenchCommand::Compare(args),
        } => bench::compare::bench_compare(args),
        Command::Bench {
            command: BenchCommand::Plot(args),
        } => bench::plot::bench_plot(args),
        Command::Bench {
            command: BenchCommand::Perplexity(args),
        } => bench::perplexity::bench_perplexity(args, &inputs),
        Command::Models {
            command: ModelsCommand::Inspect(args),
        } => models::inspect(args),
        Command::Models {
            command: ModelsCommand::List,
        } => pull::list(),
        Command::Models {
            command: ModelsCommand::Delete(args),
        } => pull::delete(&args.model),
        Command::Pull(args) => pull::pull(&args.model).map(|_| ()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        if let Some(hint) = e.hint() {
            eprintln!("hint: {hint}");
        }
        std::process::exit(e.exit_code());
    }
}
