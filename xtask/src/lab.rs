//! `cargo xtask bench-lab`: setup time and throughput per NAT scenario, in the namespace lab
//! of the end-to-end tests (`punchdrop_e2e::lab`, which says how it is built).
//!
//! Each router delays what it sends out of its WAN side by `--rtt-ms / 2` (netem-like), so a
//! peer-to-peer round trip takes `--rtt-ms` and a peer-to-server one half that. For
//! each scenario it sends the same file `--reps` times and prints the median of the
//! receiver's both-in-room → first byte and of its throughput, with the path taken. Root only.

use anyhow::Context as _;
use clap::Parser;
use punchdrop_e2e::lab::{B, Impair, Lab, Nat, Spec};
use std::path::Path;

#[derive(Parser, Debug)]
pub struct Args {
    /// File size in MiB.
    #[arg(long, default_value_t = 16)]
    size_mib: u64,
    /// Repetitions per scenario (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Simulated peer-to-peer round-trip time, in ms.
    #[arg(long, default_value_t = 20)]
    rtt_ms: u32,
    /// Only scenarios whose name contains this (e.g. "cone / cone").
    #[arg(long)]
    only: Option<String>,
}

const SCENARIOS: &[(&str, Nat, B)] = &[
    ("same LAN", Nat::Cone, B::SameLan),
    ("cone / cone", Nat::Cone, B::Behind(Nat::Cone)),
    ("UPnP / symmetric", Nat::Upnp, B::Behind(Nat::Symmetric)),
    ("cone / symmetric", Nat::Cone, B::Behind(Nat::Symmetric)),
    (
        "symmetric / symmetric",
        Nat::Symmetric,
        B::Behind(Nat::Symmetric),
    ),
    ("UDP blocked / cone", Nat::UdpBlocked, B::Behind(Nat::Cone)),
];

pub fn bench(root: &Path, args: Args) -> anyhow::Result<()> {
    crate::build_binaries(root)?;
    let bins = root.join("target/release");
    println!(
        "NAT lab, {} MiB, {} ms peer RTT, median of {}\n",
        args.size_mib, args.rtt_ms, args.reps
    );
    println!(
        "| scenario | path (A / B) | both in room → first byte | throughput |\n|---|---|---|---|"
    );
    for &(name, a, b) in SCENARIOS {
        if args.only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let mut spec = Spec::new(a, b);
        // A peer-to-peer round trip leaves through both routers' WAN sides.
        let link = Impair {
            delay_ms: args.rtt_ms / 2,
            loss: 0.0,
        };
        spec.wan = [link; 2];
        let mut setup = Vec::new();
        let mut rate = Vec::new();
        let mut paths = String::new();
        for _ in 0..args.reps.max(1) {
            // A fresh lab per run: no NAT or conntrack state carried over.
            let lab = Lab::with_bins(spec, bins.clone())
                .with_context(|| format!("build the lab for {name}"))?;
            let o = lab.transfer(args.size_mib << 20, &[], &[]);
            setup.push(o.first_byte_ms);
            let done = &o.receiver_done;
            rate.push(done.bytes as f64 / done.seconds / 1e6);
            let (a, b) = (&o.sender_connected.path, &o.receiver_connected.path);
            let this = format!(
                "{} {}-{} / {} {}",
                a.kind.as_str(),
                a.local.as_str(),
                a.remote.as_str(),
                b.kind.as_str(),
                b.protocol.as_str(),
            );
            if !paths.contains(&this) {
                if !paths.is_empty() {
                    paths.push_str("; ");
                }
                paths.push_str(&this);
            }
        }
        println!(
            "| {name} | {paths} | {:.0} ms | {:.1} MB/s |",
            crate::median(setup),
            crate::median(rate)
        );
    }
    Ok(())
}
