//! The `tandem` command line. Each subcommand is one variant of [`Command`] and one library
//! module that owns its arguments and its `run`.

use std::io::Write;

use clap::{Parser, Subcommand};
use tandem_peers::{agent, consumer, demo, relay, snapshot, tools};

/// Tandem co-browsing: relay, consumer and agent over QUIC.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a relay that pairs consumers and agents by session code and forwards their traffic.
    Relay(relay::RelayArgs),
    /// Share a page through a relay: print the session code, send the snapshot, then patches.
    Consumer(consumer::ConsumerArgs),
    /// Join a session by code and rebuild the customer's page.
    Agent(agent::AgentArgs),
    /// Relay, consumer and agent in one process over QUIC on loopback (or over an emulated link
    /// with --link), with a sample page.
    Demo(demo::DemoCommand),
    /// Import a page and report node count, snapshot bytes and tree hash.
    Snapshot(snapshot::SnapshotArgs),
    /// Diff two pages: print the patch operations and bytes, and verify the result.
    Diff(tools::DiffArgs),
    /// Replay successive states DIR/0.html, 1.html, …: snapshot and patch bytes, verified.
    Replay(tools::ReplayArgs),
}

/// The binary's allocator. Relays, consumers and agents build and drop trees of thousands of
/// small strings per snapshot, where mimalloc takes about a quarter off the system allocator's
/// time (decoding wapo-2's snapshot: 0.86 → 0.65 ms); the benchmarks measure the engine with
/// it too, or with the system allocator under `--features system-alloc`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,html5ever=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "tandem: cannot start the async runtime: {e}"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Relay(args) => relay::run(args).await.map_err(|e| e.to_string()),
            Command::Consumer(args) => consumer::run(args).await.map_err(|e| e.to_string()),
            Command::Agent(args) => agent::run(args).await.map_err(|e| e.to_string()),
            Command::Demo(args) => match demo::run(args).await {
                Ok(true) => Ok(()),
                Ok(false) => Err("the agent's tree hash differs from the consumer's".to_owned()),
                Err(e) => Err(e.to_string()),
            },
            Command::Snapshot(args) => snapshot::run(args).map_err(|e| e.to_string()),
            Command::Diff(args) => match tools::run_diff(args) {
                Ok(true) => Ok(()),
                Ok(false) => Err("applying the patch did not give the target page".to_owned()),
                Err(e) => Err(e.to_string()),
            },
            Command::Replay(args) => match tools::run_replay(args) {
                Ok(true) => Ok(()),
                Ok(false) => Err("a step did not reproduce its state".to_owned()),
                Err(e) => Err(e.to_string()),
            },
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: a reader of stderr that has gone must not turn this into a panic.
            let _ = writeln!(std::io::stderr(), "tandem: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
