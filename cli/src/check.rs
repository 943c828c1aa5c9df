//! `attnrot check`.
#[derive(clap::Args)]
pub struct Args {
    /// Random seed (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
