//! `signalling`: run the punchdrop rendezvous server.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "punchdrop signalling server: rooms where two peers meet"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "PUNCHDROP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seconds a room waits for its second peer.
    #[arg(long, env = "PUNCHDROP_ROOM_TTL", default_value_t = 1800)]
    room_ttl: u64,
    /// Most rooms open at once.
    #[arg(long, env = "PUNCHDROP_MAX_ROOMS", default_value_t = 10_000)]
    max_rooms: usize,
    /// Sustained signalling messages per second per client address.
    #[arg(long, env = "PUNCHDROP_MSG_RATE", default_value_t = 50)]
    msg_rate: u32,
    /// Message burst per client address.
    #[arg(long, env = "PUNCHDROP_MSG_BURST", default_value_t = 200)]
    msg_burst: u32,
    /// Rooms one client address may create per minute.
    #[arg(long, env = "PUNCHDROP_ROOM_RATE", default_value_t = 60)]
    room_rate: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PUNCHDROP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = signalling::Config {
        listen: args.listen,
        room_ttl: Duration::from_secs(args.room_ttl),
        max_rooms: args.max_rooms,
        messages_per_sec: args.msg_rate,
        messages_burst: args.msg_burst,
        rooms_per_min: args.room_rate,
    };
    let server = signalling::Server::spawn(config).await?;
    // The first stdout line is the ready signal scripts and tests wait for.
    println!("punchdrop signalling listening on {}", server.url());
    let token = server.shutdown_token();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    server.wait().await;
    Ok(())
}
