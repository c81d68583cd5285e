//! The `voxd` command: `serve` and `check-config`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use voxd::{serve, AppState, Config, Overrides};

/// voxd: a streaming voice-bot orchestration server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve /ws and the HTTP endpoints.
    Serve {
        /// The config file. Default: ./config.toml if it exists, else the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Concurrent sessions admitted (overrides server.max_sessions).
        #[arg(long)]
        max_sessions: Option<usize>,
        /// Log format; the level comes from RUST_LOG (default info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Load-test a voxd server: thousands of real-time voice sessions from one core.
    Bench {
        #[command(flatten)]
        args: Box<voxd_bench::BenchArgs>,
        /// Worker threads of the load tool (1: a single core).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Validate a config file and exit: 0 when valid, 1 with a message naming the bad key.
    CheckConfig {
        /// The file. Default: ./config.toml.
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => {
            let path = file.unwrap_or_else(|| PathBuf::from("config.toml"));
            // Validated, then built: a provider's own error names its key in its table. MCP
            // servers are connected and listed too, on a current-thread runtime.
            let checked = Config::load(&path)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime
                        .block_on(voxd::providers::Providers::connect(&c))
                        .map(|_| ())
                        .map_err(|e| anyhow::Error::from(e).context("invalid provider config"))
                });
            match checked {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench { args, threads } => run_bench(&args, threads),
        Command::Serve {
            config,
            listen,
            max_sessions,
            log_format,
        } => {
            init_logging(log_format);
            // On one CPU (taskset, a cpuset, a CPU quota), a current-thread runtime: a
            // multi-thread runtime with its one worker does the same work through atomics and
            // work-stealing queues, 6.5 % more instructions per idle inbound frame, and its
            // p95 and p99 at saturation were about twice the current-thread runtime's
            // (BENCHMARKS.md, "The runtime on one CPU").
            let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
            let mut builder = if cpus == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                tokio::runtime::Builder::new_multi_thread()
            };
            let runtime = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_server(config, listen, max_sessions)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_bench(args: &voxd_bench::BenchArgs, threads: usize) -> ExitCode {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(voxd_bench::run(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", report.table());
    let written = args
        .json
        .as_deref()
        .map(|p| report.write_json(p))
        .transpose()
        .and_then(|_| args.csv.as_deref().map(|p| report.write_csv(p)).transpose());
    if let Err(e) = written {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(f) = &args.fail_if {
        match report.violations(f) {
            Ok(v) if v.is_empty() => {}
            Ok(v) => {
                for c in v {
                    eprintln!("fail-if: {c}");
                }
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run_server(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    max_sessions: Option<usize>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    anyhow::ensure!(max_sessions != Some(0), "--max-sessions must be at least 1");
    // The command line overrides the file before validation: one check for both.
    let overrides = Overrides {
        listen,
        max_sessions,
    };
    let config = match config {
        Some(path) => Config::load_with(&path, overrides)?,
        None if Path::new("config.toml").exists() => {
            Config::load_with(Path::new("config.toml"), overrides)?
        }
        None => Config::defaults_with(overrides)?,
    };
    let addr = config.listen();
    let state = AppState::new(config)
        .await
        .context("cannot build the configured providers")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    println!("voxd listening on http://{local}");
    tracing::info!(
        startup_ms = started.elapsed().as_secs_f64() * 1000.0,
        runtime = ?tokio::runtime::Handle::current().runtime_flavor(),
        "accepting connections"
    );
    let drain = state.config.drain_timeout();
    // The first SIGTERM or SIGINT starts the drain with its lame-duck grace; a second one ends
    // the grace at once (an operator's second Ctrl-C).
    let shutdown = {
        let state = std::sync::Arc::clone(&state);
        async move {
            shutdown_signal().await;
            tokio::spawn(async move {
                shutdown_signal().await;
                state.end_drain_grace();
            });
        }
    };
    serve(listener, state, shutdown, drain).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
