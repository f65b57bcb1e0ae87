//! The `nudge` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Nudge: contextual-bandit decisions with true propensities.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate policy files the way the service loads them; print every
    /// error and exit non-zero if there is any.
    Check {
        /// Policy files or directories (searched recursively for *.toml).
        #[arg(default_value = "policies")]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { paths } => check(&paths),
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let (specs, errors) = nudge::policy::load_paths(paths);
    for spec in &specs {
        println!(
            "ok    {} (v{}, {}, {}, d = {})",
            spec.id,
            spec.version,
            spec.algorithm.name(),
            spec.mode.name(),
            spec.features.dim()
        );
    }
    for e in &errors {
        eprintln!("error {e}");
    }
    if errors.is_empty() && specs.is_empty() {
        eprintln!("error: no policy files found under {paths:?}");
        return ExitCode::FAILURE;
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} error(s) in policy files", errors.len());
        ExitCode::FAILURE
    }
}
