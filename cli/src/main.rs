use clap::{Parser, Subcommand};

mod bench;
mod chart;
mod check;
mod eval;
mod kvstats;
mod ppl;
mod stats;
mod text;
mod tune;
mod upstream;

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
    /// Quality on a real model: PPL, KL divergence vs f16, same-top-token %, tokens/s; stock vs attnrot, rotation on/off.
    Eval(eval::Args),
    /// Speed on a real model: llama-bench pp/tg at several depths, stock vs attnrot (exact and quality mode), rotation on/off; --full for the long sweep.
    Bench(bench::Args),
    /// Real K/V, measured: capture Q/K/V from llama.cpp on a calibration text, outlier statistics, and the score/output errors of every ggml format (rotation none/WHT/WHT+signs) vs TurboQuant at matched bits.
    Stats(stats::Args),
    /// Measure a model's queries on a calibration text and write the quality policy (ATTNROT_POLICY) that makes the backend choose K cache blocks by score error.
    Tune(tune::Args),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Check(a) => check::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Stats(a) => stats::run(a),
        Cmd::Tune(a) => tune::run(a),
    };
    if let Err(e) = r {
        // one clear message, no backtrace: what is wrong and (in the message) what to do
        eprintln!("attnrot: error: {e:#}");
        std::process::exit(1);
    }
}
