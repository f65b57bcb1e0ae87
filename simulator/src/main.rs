//! The `nudge-sim` command line.

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
    Evaluate(nudge_sim::ope::Args),
    /// Run policies online against a synthetic scenario.
    Run(nudge_sim::env::Args),
    /// Compare reward functions on the same scenario or logs.
    Tune(nudge_sim::tune::Args),
    /// Export the decision log to Parquet (partitioned by policy and day) or
    /// to Vowpal Wabbit DSJSON.
    Export(nudge_sim::export::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Evaluate(args) => nudge_sim::ope::main(args),
        Command::Run(args) => nudge_sim::env::main(args),
        Command::Tune(args) => nudge_sim::tune::main(args),
        Command::Export(args) => nudge_sim::export::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("nudge-sim: {err:#}");
            ExitCode::from(2)
        }
    }
}
