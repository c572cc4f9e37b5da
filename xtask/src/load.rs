//! `cargo xtask load`: the signalling server under many idle peers, live pairs and abuse, on
//! loopback (the work is `punchdrop_e2e::load`; this builds, runs and prints its tables).

use std::path::Path;
use std::time::Duration;

#[derive(clap::Parser, Debug)]
pub struct Args {
    /// Idle peers (each a WebSocket that created a room), from as many addresses.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Pairs relaying sealed messages meanwhile.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Sealed round trips per pair.
    #[arg(long, default_value_t = 100)]
    round_trips: usize,
    /// Skip the abuse scenarios.
    #[arg(long)]
    no_abuse: bool,
    /// Deadline for the whole run, in seconds.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Every peer over TLS (https/wss, a certificate of the run's own CA); implies
    /// --no-abuse (the floods speak plain HTTP).
    #[arg(long)]
    tls: bool,
    /// Two nodes sharing rooms through a Redis of the run's own (Debian's redis-server):
    /// pairs on one node and across the two; implies --no-abuse.
    #[arg(long)]
    redis: bool,
}

pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    super::build_binaries(root)?;
    let report = punchdrop_e2e::load::run(
        &root.join("target/release"),
        &punchdrop_e2e::load::Args {
            idle: args.idle,
            pairs: args.pairs,
            round_trips: args.round_trips,
            abuse: !args.no_abuse && !args.tls && !args.redis,
            deadline: Duration::from_secs(args.seconds),
            tls: args.tls,
            redis: args.redis,
        },
    )?;
    println!("\n{}", report.markdown());
    if let Some(r) = report.abuse.iter().find(|r| r.honest_ok < r.honest_total) {
        anyhow::bail!(
            "{}: only {}/{} honest clients were served",
            r.scenario,
            r.honest_ok,
            r.honest_total
        );
    }
    Ok(())
}
