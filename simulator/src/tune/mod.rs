//! `nudge-sim` — not implemented yet.

use std::process::ExitCode;

/// Command-line arguments.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command.
pub fn main(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
