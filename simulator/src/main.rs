//! The `nudge-sim` command line (skeleton).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Nudge simulator: off-policy evaluation, synthetic runs, reward tuning.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Off-policy evaluation of candidate policies on logged decisions.
    Evaluate,
    /// Run policies online against a synthetic scenario.
    Run,
    /// Compare reward functions on the same scenario or logs.
    Tune,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!("nudge-sim {:?}: not implemented yet", cli.command);
    ExitCode::from(2)
}
