//! `sluice-mock`: runs the fake OpenAI-compatible upstream until SIGTERM or
//! Ctrl-C (the quick start, benchmarks, and manual testing).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use sluice_mock::{FailMode, MockConfig};

/// The fake OpenAI-compatible upstream.
#[derive(Debug, Parser)]
#[command(name = "sluice-mock", version, about)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Chunks per streamed response.
    #[arg(long, default_value_t = 16)]
    chunks: u32,
    /// Delay between chunks, ms.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Delay before response headers, ms.
    #[arg(long, default_value_t = 0)]
    ttfb_ms: u64,
    /// Failure mode: none, status, drop, drop_mid_stream, hang, stall, malformed.
    #[arg(long, default_value_t = FailMode::None)]
    fail: FailMode,
    /// Status for --fail status.
    #[arg(long, default_value_t = 500)]
    status: u16,
    /// Serve TLS with a generated test CA written to DIR/ca.pem.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Write the bound address here once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    let tls = args
        .tls_dir
        .as_deref()
        .map(sluice_mock::test_tls)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let config = MockConfig {
        chunks: args.chunks,
        chunk_delay_ms: args.chunk_delay_ms,
        ttfb_ms: args.ttfb_ms,
        fail: args.fail,
        status: args.status,
        ..MockConfig::default()
    };
    let mock = sluice_mock::start(args.listen, config, tls).await?;
    tracing::info!(addr = %mock.addr, "mock upstream listening");
    if let Some(path) = args.ready_file {
        std::fs::write(path, mock.addr.to_string())?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
