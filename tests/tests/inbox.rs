//! `native-peer inbox` end to end: a real server, a running inbox registered with it, drops
//! from `native-peer send --to INBOX_LINK`, files compared by hash.
//!
//! The server's registration (`register` → `challenge` → `prove`) is also driven by hand
//! over a WebSocket, to show that an id cannot be claimed without its key.

use base64::Engine as _;
use protocol::event::{self, Event};
use protocol::signal::{ClientMessage, SIGNAL_VERSION, ServerMessage};
use punchdrop_e2e::{
    LONG, Peer, Signalling, count, expect_done, expect_error, free_port, hash_file, inbox_manage,
    make_file, wrong_secret,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A running inbox saving into `dir`, its identity in `state`; returns it and its link.
fn inbox(server: &str, dir: &Path, state: &Path, extra: &[&str]) -> (Peer, String) {
    let (d, s) = (dir.display().to_string(), state.display().to_string());
    let mut args = vec!["--server", server, "inbox", "--dir", &d, "--state", &s];
    args.extend_from_slice(extra);
    let mut p = Peer::spawn(&args);
    let ready: event::Ready = p.wait(Duration::from_secs(10)).expect("the inbox's link");
    (p, ready.link)
}

/// `native-peer send --to link file`, to its end.
fn drop_file(server: &str, link: &str, file: &Path) -> (std::process::ExitStatus, Vec<Event>) {
    let f = file.display().to_string();
    Peer::spawn(&["--server", server, "send", "--to", link, &f])
        .finish(LONG)
        .unwrap()
}

/// Drop `file` once the inbox is registered again: a dropper meets `inbox_offline` until then.
fn drop_when_back(server: &str, link: &str, file: &Path) -> event::Done {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, events) = drop_file(server, link, file);
        if status.success() || Instant::now() > until {
            return expect_done(status, &events);
        }
        let why = expect_error(status, &events);
        assert!(why.contains("offline"), "{why}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn file(dir: &Path, name: &str, len: u64, seed: u64) -> PathBuf {
    let p = dir.join(name);
    make_file(&p, len, seed);
    p
}

fn assert_arrived(dst: &Path, sent: &Path) {
    let got = dst.join(sent.file_name().unwrap());
    assert_eq!(hash_file(&got), hash_file(sent), "{}", got.display());
}

/// What a running inbox said so far, after it stopped.
fn stop(mut inbox: Peer) -> Vec<Event> {
    inbox.kill();
    inbox.finish(Duration::from_secs(10)).unwrap().1
}

#[test]
fn drops_land_one_after_another_and_several_at_once() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let (inbox, link) = inbox(&sig.url, dst.path(), &state, &[]);
    assert!(link.contains("/i/"), "{link}");
    // Two in a row.
    let one = file(src.path(), "one.bin", 3 << 20, 1);
    let two = file(src.path(), "two.bin", 1 << 20, 2);
    for f in [&one, &two] {
        let (status, events) = drop_file(&sig.url, &link, f);
        expect_done(status, &events);
        assert_arrived(dst.path(), f);
    }
    // Three at once.
    let many: Vec<PathBuf> = (0..3)
        .map(|i| file(src.path(), &format!("many{i}.bin"), 2 << 20, 10 + i))
        .collect();
    let senders: Vec<Peer> = many
        .iter()
        .map(|f| {
            let f = f.display().to_string();
            Peer::spawn(&["--server", &sig.url, "send", "--to", &link, &f])
        })
        .collect();
    for s in senders {
        let (status, events) = s.finish(LONG).unwrap();
        expect_done(status, &events);
    }
    for f in &many {
        assert_arrived(dst.path(), f);
    }
    // A sender is done when the inbox has acknowledged its file; the inbox says its own
    // `done` a moment later (CI once stopped it in between).
    let mut inbox = inbox;
    let until = Instant::now() + Duration::from_secs(10);
    while count::<event::Done>(inbox.events_so_far()) < 5 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = stop(inbox);
    assert_eq!(
        count::<event::Done>(&said),
        5,
        "one done per drop: {said:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the state file holds the inbox's key");
    }
}

/// The link stays valid across a restart of the server (same address) and of the inbox
/// (same state file).
#[test]
fn the_same_link_works_after_the_server_and_the_inbox_restart() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut sig = Signalling::start_at(&listen);
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let (inbox1, link) = inbox(&sig.url, dst.path(), &state, &[]);
    let a = file(src.path(), "a.bin", 1 << 20, 3);
    drop_when_back(&sig.url, &link, &a);
    // The server restarts: the inbox registers again by itself.
    sig.kill();
    let sig = Signalling::start_at(&listen);
    let b = file(src.path(), "b.bin", 1 << 20, 4);
    drop_when_back(&sig.url, &link, &b);
    // The inbox restarts from its state: the same link.
    stop(inbox1);
    let (inbox2, again) = inbox(&sig.url, dst.path(), &state, &[]);
    assert_eq!(again, link, "a restarted inbox keeps its link");
    let c = file(src.path(), "c.bin", 1 << 20, 5);
    drop_when_back(&sig.url, &link, &c);
    for f in [&a, &b, &c] {
        assert_arrived(dst.path(), f);
    }
    stop(inbox2);
    // `inbox link` prints it any time; `inbox rotate` changes its secret: the old link is
    // refused, the new one drops.
    let s = state.display().to_string();
    let said = |sub: &str| -> String {
        let (status, events) = Peer::spawn(&["--server", &sig.url, "inbox", sub, "--state", &s])
            .finish(Duration::from_secs(10))
            .unwrap();
        assert!(status.success(), "inbox {sub}: {events:?}");
        event::find::<event::Ready>(&events).unwrap().link.clone()
    };
    assert_eq!(said("link"), link);
    let rotated = said("rotate");
    assert_ne!(rotated, link);
    assert_eq!(
        rotated.split('#').next(),
        link.split('#').next(),
        "the same inbox id"
    );
    let (inbox3, again) = inbox(&sig.url, dst.path(), &state, &[]);
    assert_eq!(again, rotated);
    let d = file(src.path(), "d.bin", 1 << 20, 13);
    let (status, events) = drop_file(&sig.url, &link, &d);
    let why = expect_error(status, &events);
    assert!(why.contains("secret does not match"), "{why}");
    drop_when_back(&sig.url, &rotated, &d);
    assert_arrived(dst.path(), &d);
    stop(inbox3);
}

#[test]
fn a_wrong_secret_or_an_offline_inbox_is_refused_plainly() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let (inbox, link) = inbox(&sig.url, dst.path(), &state, &[]);
    let f = file(src.path(), "secret.bin", 1 << 20, 6);
    let (status, events) = drop_file(&sig.url, &wrong_secret(&link), &f);
    let why = expect_error(status, &events);
    assert!(why.contains("secret does not match"), "{why}");
    assert!(dir_is_empty(dst.path()), "a refused drop writes nothing");
    // The inbox goes on: the right link still drops.
    let (status, events) = drop_file(&sig.url, &link, &f);
    expect_done(status, &events);
    assert_arrived(dst.path(), &f);
    // Stopped, it is offline, and a dropper hears so at once.
    stop(inbox);
    let started = Instant::now();
    let (status, events) = drop_file(&sig.url, &link, &f);
    let why = expect_error(status, &events);
    assert!(why.contains("inbox is offline"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A drop that fails during the key exchange leaves nothing of its connection behind: the
/// inbox, the joining receiver, starts its connection before the key is agreed and closes it
/// when the rendezvous fails, so with a fixed `--port` (a port forwarded by hand) the next
/// drop binds the port again.
#[test]
fn a_failed_drop_frees_the_inbox_port_for_the_next() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let port = free_port().to_string();
    let extra = ["--port", &port, "--max-concurrent", "1"];
    let (inbox, link) = inbox(&sig.url, dst.path(), &state, &extra);
    let f = file(src.path(), "after.bin", 1 << 20, 7);
    for _ in 0..2 {
        let (status, events) = drop_file(&sig.url, &wrong_secret(&link), &f);
        let why = expect_error(status, &events);
        assert!(why.contains("secret does not match"), "{why}");
    }
    let (status, events) = drop_file(&sig.url, &link, &f);
    expect_done(status, &events);
    assert_arrived(dst.path(), &f);
    stop(inbox);
}

#[test]
fn a_drop_over_the_inbox_limit_is_refused_with_the_reason_and_writes_nothing() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let limit = ["--max-bytes-per-drop", "1000000"];
    let (inbox, link) = inbox(&sig.url, dst.path(), &state, &limit);
    let big = file(src.path(), "big.bin", 2 << 20, 7);
    let (status, events) = drop_file(&sig.url, &link, &big);
    let why = expect_error(status, &events);
    assert!(why.contains("declined"), "{why}");
    assert!(dir_is_empty(dst.path()), "a refused drop writes nothing");
    let small = file(src.path(), "small.bin", 500_000, 8);
    let (status, events) = drop_file(&sig.url, &link, &small);
    expect_done(status, &events);
    assert_arrived(dst.path(), &small);
    stop(inbox);
}

/// `--max-bytes-per-day` counts every drop of the day: once what is left is less than a
/// drop, that drop is declined with the reason and writes nothing. `--keep-free` declines a
/// drop that would leave less than that free on the disk.
#[test]
fn a_day_quota_and_a_free_space_reserve_decline_with_the_reason() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let quota = ["--max-bytes-per-day", "3000000"];
    let (inbox1, link) = inbox(&sig.url, dst.path(), &state, &quota);
    let first = file(src.path(), "first.bin", 2_000_000, 11);
    let (status, events) = drop_file(&sig.url, &link, &first);
    expect_done(status, &events);
    assert_arrived(dst.path(), &first);
    let second = file(src.path(), "second.bin", 2_000_000, 12);
    let (status, events) = drop_file(&sig.url, &link, &second);
    let why = expect_error(status, &events);
    assert!(
        why.contains("declined") && why.contains("at most 1000000 more today"),
        "{why}"
    );
    assert!(
        !dst.path().join("second.bin").exists(),
        "a declined drop writes nothing"
    );
    stop(inbox1);
    // Two drops at once that the day's quota holds one of: one lands, one is declined
    // (the first one's offer is promised as it is accepted).
    let fresh = tempdir();
    let (inbox3, link3) = inbox(&sig.url, fresh.path(), &st.path().join("3.json"), &quota);
    let pair = [
        file(src.path(), "a.bin", 2_000_000, 13),
        file(src.path(), "b.bin", 2_000_000, 14),
    ];
    let senders: Vec<Peer> = pair
        .iter()
        .map(|f| {
            let f = f.display().to_string();
            Peer::spawn(&["--server", &sig.url, "send", "--to", &link3, &f])
        })
        .collect();
    let outcomes: Vec<bool> = senders
        .into_iter()
        .map(|s| s.finish(LONG).unwrap().0.success())
        .collect();
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{outcomes:?}");
    assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 1);
    stop(inbox3);
    // A reserve no disk has: every drop would break it.
    let (inbox2, link) = inbox(
        &sig.url,
        dst.path(),
        &state,
        &["--keep-free", "1000000000000000000"],
    );
    let (status, events) = drop_file(&sig.url, &link, &second);
    let why = expect_error(status, &events);
    assert!(why.contains("keeps") && why.contains("free"), "{why}");
    assert!(
        !dst.path().join("second.bin").exists(),
        "a declined drop writes nothing"
    );
    stop(inbox2);
}

/// The server keeps an inbox id for whoever signs its challenge with the id's key: another
/// key, a signature by another key, or a replayed proof is refused (`not_yours`), and the
/// real inbox stays registered.
#[test]
fn nobody_without_the_key_can_register_an_inbox() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let (inbox, link) = inbox(&sig.url, dst.path(), &state, &[]);
    let id = link
        .rsplit_once("/i/")
        .unwrap()
        .1
        .split('#')
        .next()
        .unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let public = public_key(stored["key"].as_str().unwrap());
    // Someone else's key for this id.
    let mut ws = connect(&sig.url);
    let reply = ask(&mut ws, register(id, &b64(&[9u8; 32])));
    assert_eq!(error_code(&reply), "not_yours", "{reply:?}");
    // The right public key, and a signature the claimant cannot make.
    let mut ws = connect(&sig.url);
    let reply = ask(&mut ws, register(id, &public));
    assert!(
        matches!(reply, ServerMessage::Challenge { .. }),
        "{reply:?}"
    );
    let reply = ask(
        &mut ws,
        ClientMessage::Prove {
            sig: b64(&[1u8; 64]),
        },
    );
    assert_eq!(error_code(&reply), "not_yours", "{reply:?}");
    // The real inbox still takes drops.
    let f = file(src.path(), "still.bin", 1 << 20, 9);
    let (status, events) = drop_file(&sig.url, &link, &f);
    expect_done(status, &events);
    assert_arrived(dst.path(), &f);
    stop(inbox);
}

/// `--paired-only`: a device that is not paired is refused with the reason and nothing is
/// written; one pairing code pairs one device once, which is then known by its key (and
/// its files land in its folder with `--layout by-device`); a revoked device is refused
/// again. The inbox's name reaches link holders (sealed: the server cannot read it).
#[test]
fn only_paired_devices_drop_into_a_paired_only_inbox() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let log = st.path().join("drops.log");
    let log_arg = log.display().to_string();
    let extra = [
        "--paired-only",
        "--layout",
        "by-device",
        "--name",
        "Test NAS",
        "--log",
        &log_arg,
    ];
    let (inbox, link) = inbox(&sig.url, dst.path(), &state, &extra);
    let (phone, laptop) = (tempdir(), tempdir());
    let drop_as = |device: &Path, f: &Path, more: &[&str]| {
        let f = f.display().to_string();
        let mut args = vec!["--server", &sig.url, "send", "--to", &link];
        args.extend_from_slice(more);
        args.push(&f);
        let mut cmd = std::process::Command::new(punchdrop_e2e::bin("native-peer"));
        cmd.env("XDG_STATE_HOME", device);
        Peer::spawn_cmd(cmd, &args).finish(LONG).unwrap()
    };
    let f = file(src.path(), "photo.jpg", 1 << 20, 5);
    // Not paired: refused, and nothing written.
    let (status, events) = drop_as(phone.path(), &f, &[]);
    let why = expect_error(status, &events);
    assert!(why.contains("paired devices"), "{why}");
    assert!(dir_is_empty(dst.path()));
    // A code pairs the phone, under the name it gives; its drops land in its folder.
    let code = inbox_manage(&state, &["pair"]).unwrap();
    let (status, events) = drop_as(
        phone.path(),
        &f,
        &["--pair", &code, "--device-name", "Phone"],
    );
    expect_done(status, &events);
    assert_arrived(&dst.path().join("Phone"), &f);
    let g = file(src.path(), "second.jpg", 1 << 19, 6);
    let (status, events) = drop_as(phone.path(), &g, &[]);
    expect_done(status, &events);
    assert_arrived(&dst.path().join("Phone"), &g);
    // The code is spent: the laptop cannot use it.
    let (status, events) = drop_as(laptop.path(), &g, &["--pair", &code]);
    let why = expect_error(status, &events);
    assert!(why.contains("pairing code is not valid"), "{why}");
    assert!(
        inbox_manage(&state, &["devices"])
            .unwrap()
            .starts_with("Phone\t")
    );
    // Revoked: refused from the next drop on (the running inbox reads its state per drop).
    inbox_manage(&state, &["revoke", "Phone"]).unwrap();
    let (status, events) = drop_as(phone.path(), &g, &[]);
    let why = expect_error(status, &events);
    assert!(why.contains("paired devices"), "{why}");
    let lines = std::fs::read_to_string(&log).unwrap();
    let devices: Vec<Option<String>> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["device"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        devices
            .iter()
            .filter(|d| d.as_deref() == Some("Phone"))
            .count(),
        2,
        "{lines}"
    );
    // The name, as a page opening the link reads it.
    let (id, secret) = link.rsplit_once("/i/").unwrap().1.split_once('#').unwrap();
    let reply = ask(
        &mut connect(&sig.url),
        ClientMessage::Look {
            version: SIGNAL_VERSION,
            inboxes: vec![id.to_string()],
        },
    );
    let ServerMessage::Inboxes { inboxes } = reply else {
        panic!("{reply:?}")
    };
    assert!(inboxes[0].online);
    let sealed = inboxes[0].name.as_deref().expect("a sealed name");
    assert!(!sealed.contains("Test"));
    assert_eq!(
        protocol::inbox::open_name(secret, sealed).as_deref(),
        Some("Test NAS")
    );
    stop(inbox);
}

/// Drops into an inbox with `--layout by-date` land in a folder named for the UTC day.
#[test]
fn a_by_date_inbox_files_drops_by_day() {
    let sig = Signalling::start();
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    let (inbox, link) = inbox(&sig.url, dst.path(), &state, &["--layout", "by-date"]);
    let f = file(src.path(), "a.bin", 1 << 20, 7);
    let (status, events) = drop_file(&sig.url, &link, &f);
    expect_done(status, &events);
    let days: Vec<_> = std::fs::read_dir(dst.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(days.len(), 1, "{days:?}");
    let day = &days[0];
    assert!(
        day.len() == 10 && day.as_bytes()[4] == b'-' && day.as_bytes()[7] == b'-',
        "{day}"
    );
    assert_arrived(&dst.path().join(day), &f);
    stop(inbox);
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn connect(server: &str) -> Ws {
    let url = format!("{}/ws", server.replacen("http", "ws", 1));
    tungstenite::connect(url)
        .expect("WebSocket to the server")
        .0
}

fn ask(ws: &mut Ws, msg: ClientMessage) -> ServerMessage {
    ws.send(tungstenite::Message::text(msg.to_json())).unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn register(id: &str, key: &str) -> ClientMessage {
    ClientMessage::Register {
        version: SIGNAL_VERSION,
        inbox: id.to_string(),
        key: key.to_string(),
        name: None,
    }
}

fn error_code(reply: &ServerMessage) -> String {
    match reply {
        ServerMessage::Error { code, .. } => serde_json::to_value(code)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The public key of the secret key the state file holds.
fn public_key(secret_b64: &str) -> String {
    let raw: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(secret_b64)
        .unwrap()
        .try_into()
        .unwrap();
    b64(ed25519_dalek::SigningKey::from_bytes(&raw)
        .verifying_key()
        .as_bytes())
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `inbox --relay` lends the inbox's machine to its server as a volunteer relay: the server
/// lists it while the inbox keeps taking drops, and drops it from the pool when the inbox
/// stops.
#[test]
fn an_inbox_with_relay_is_listed_as_a_volunteer_while_it_runs() {
    let sig = Signalling::start_with(&["--volunteer-relays", "open"]);
    let (src, dst, st) = (tempdir(), tempdir(), tempdir());
    let state = st.path().join("inbox.json");
    // No router on loopback to ask for a mapping; ports of its own.
    let ports = punchdrop_e2e::volunteer::loopback_ports();
    let (mut inbox, link) = inbox(
        &sig.url,
        dst.path(),
        &state,
        &[
            "--relay",
            "--no-portmap",
            "--relay-listen",
            "127.0.0.1:0",
            "--relay-ports",
            &ports,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sig.metric("punchdrop_volunteer_relays") < 1 {
        assert!(
            Instant::now() < deadline,
            "the inbox's relay was not listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let f = file(src.path(), "with-relay.bin", 1 << 20, 5);
    let (status, events) = drop_file(&sig.url, &link, &f);
    expect_done(status, &events);
    assert_arrived(dst.path(), &f);
    // The dropper is done once the inbox acknowledged the file; the inbox says so a moment
    // later (after its acknowledgement is itself acknowledged): not killed before.
    inbox.wait::<event::Done>(Duration::from_secs(10)).unwrap();
    let said = stop(inbox);
    assert_eq!(count::<event::Done>(&said), 1, "{said:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sig.metric("punchdrop_volunteer_relays") > 0 {
        assert!(
            Instant::now() < deadline,
            "the stopped inbox's relay is still listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
