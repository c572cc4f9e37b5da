//! Server → peer WebSocket text: what a peer parses from the signalling server (which it does
//! not trust with anything but forwarding). Each line of the input is one text frame.
//!
//! Never panics; whatever parses serialises back to text that parses to the same message; and
//! the rendezvous machine of a creator and of a joiner (each also holding its room / joining
//! again after a lost connection), fed the lines after its socket opened, with the
//! connection lost halfway, never panics whatever it is sent.
#![no_main]

use core::time::Duration;
use libfuzzer_sys::fuzz_target;
use protocol::invite::{Invitation, ShareLink};
use protocol::rendezvous::{Config, Output, Place, Rendezvous, Want};
use protocol::signal::ServerMessage;

const SERVER: &str = "http://127.0.0.1:8080";

/// Take every output up to the next timeout; returns that timeout. A socket it asks for
/// opens at once.
fn drain(r: &mut Rendezvous, now: Duration) -> Duration {
    for _ in 0..10_000 {
        match r.poll_output() {
            Output::Timeout(at) => return at,
            Output::OpenServer => r.server_open(now),
            _ => {}
        }
    }
    panic!("a rendezvous machine kept producing outputs");
}

fn run(mut r: Rendezvous, lines: &[&str]) {
    let mut now = Duration::from_secs(1000);
    r.server_open(now);
    drain(&mut r, now);
    for (i, line) in lines.iter().enumerate() {
        now += Duration::from_millis(100);
        if i == lines.len() / 2 {
            r.link_lost(now);
            drain(&mut r, now);
        }
        r.handle_server_text(line, now);
        drain(&mut r, now);
    }
    // Let every deadline it armed pass, too.
    for _ in 0..4 {
        let at = drain(&mut r, now);
        now = now.max(at);
        r.handle_timeout(now);
    }
    drain(&mut r, now);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').take(64).collect();
    for line in &lines {
        if let Ok(msg) = serde_json::from_str::<ServerMessage>(line) {
            let json = msg.to_json();
            let back: ServerMessage = serde_json::from_str(&json).expect("to_json output parses");
            assert_eq!(back, msg, "{json}");
        }
    }
    let start = Duration::from_secs(1000);
    run(
        Rendezvous::create(SERVER, Want::Send, Config::default(), start),
        &lines,
    );
    let link = ShareLink::new(SERVER, "room1234", "AAECAwQFBgcICQoLDA0ODw");
    let invitation = Invitation::parse(&link.to_string()).expect("a valid link");
    run(
        Rendezvous::join(&invitation, SERVER, Want::Receive, Config::default(), start),
        &lines,
    );
    let holding = Config {
        rejoin_wait: Some(Duration::from_secs(300)),
        ..Config::default()
    };
    run(
        Rendezvous::create(SERVER, Want::Send, holding, start),
        &lines,
    );
    run(
        Rendezvous::rejoin(
            &invitation,
            Some(&Place {
                room: "room1234".into(),
                token: Some("t0k3n".into()),
            }),
            SERVER,
            Want::Receive,
            holding,
            start,
        ),
        &lines,
    );
});
