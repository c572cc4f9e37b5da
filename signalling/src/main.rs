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
    /// Extra STUN server URL handed to peers (repeatable), e.g. stun:stun.example.org:3478.
    #[arg(long = "stun", env = "PUNCHDROP_STUN", value_delimiter = ',')]
    stun: Vec<String>,
    /// External TURN server URL handed to peers with minted credentials (repeatable), e.g.
    /// turn:turn.example.org:3478?transport=udp. Needs --turn-secret.
    #[arg(long = "turn", env = "PUNCHDROP_TURN", value_delimiter = ',')]
    turn: Vec<String>,
    /// Secret shared with the TURN servers (coturn: static-auth-secret). Random if unset,
    /// which only the bundled server can use.
    #[arg(long, env = "PUNCHDROP_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Lifetime of TURN credentials, in seconds.
    #[arg(long, env = "PUNCHDROP_TURN_TTL", default_value_t = 86_400)]
    turn_ttl: u64,
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
        ice: signalling::IceSettings {
            stun_urls: args.stun.clone(),
            turn_urls: args.turn.clone(),
            secret: Some(match &args.turn_secret {
                Some(s) => signalling::credentials::TurnSecret::new(s.as_bytes().to_vec()),
                None => signalling::credentials::TurnSecret::random(),
            }),
            credential_ttl: Duration::from_secs(args.turn_ttl),
        },
    };
    if !args.turn.is_empty() && args.turn_secret.is_none() {
        anyhow::bail!("--turn needs --turn-secret (the secret the TURN servers share)");
    }
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
