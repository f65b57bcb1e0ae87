//! The `nudge` command line: `serve`, `migrate`, `check`.

use clap::{Parser, Subcommand};
use nudge::config::Settings;
use nudge::startup::Application;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Nudge: contextual-bandit decisions with true propensities.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (settings from NUDGE_* variables and nudge.toml).
    Serve,
    /// Apply the decision-log migrations to NUDGE_DATABASE_URL and exit.
    Migrate,
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
        Command::Serve => run(serve),
        Command::Migrate => run(migrate),
    }
}

fn run<F: Future<Output = Result<(), String>>>(f: fn(Settings) -> F) -> ExitCode {
    nudge::telemetry::init();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(f(settings)),
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let app = Application::build(settings)
        .await
        .map_err(|e| e.to_string())?;
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

async fn migrate(settings: Settings) -> Result<(), String> {
    nudge::log::migrate(&settings.database_url)
        .await
        .map_err(|e| e.to_string())?;
    println!("migrations applied to {}", settings.database_url);
    Ok(())
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
