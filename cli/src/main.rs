use clap::{Parser, Subcommand};

mod check;

/// attnrot: rotated quantized KV-cache kernels for llama.cpp, checked against upstream.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fresh random data through every kernel, ours vs upstream: bit-exactness, worst error, speed ratio.
    Check(check::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check(a) => check::run(a),
    }
}
