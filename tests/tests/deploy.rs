//! The server as it runs on the internet: https and wss from certificate files (signed by a
//! test CA that the peers are told to trust with `--ca-file`, as a private CA's users would
//! be), the certificate read again on SIGHUP, plain http redirected to https, settings from
//! a TOML file, and a drain on SIGTERM that lets rooms and relays in progress finish.

use protocol::signal::{ErrorCode, ServerMessage};
use punchdrop_e2e::tls::TestCa;
use punchdrop_e2e::ws::*;
use punchdrop_e2e::*;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `GET path` over https trusting only `ca`: the response head and the server's leaf
/// certificate.
fn https_get(addr: &str, ca: &Path, path: &str) -> (String, Vec<u8>) {
    let (head, _, leaf) = https_request(addr, &std::fs::read(ca).unwrap(), "localhost", path)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    (head, leaf)
}

/// `GET path` over https to `addr` as `name`, trusting only the PEM roots `ca`: the response
/// head, its body and the server's leaf certificate; an error if the handshake fails.
fn https_request(
    addr: &str,
    ca: &[u8],
    name: &str,
    path: &str,
) -> anyhow::Result<(String, Vec<u8>, Vec<u8>)> {
    let config = punchdrop_e2e::tls::client_trusting(ca)?;
    let server = rustls::pki_types::ServerName::try_from(name.to_owned())?;
    let conn = rustls::ClientConnection::new(config, server)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )?;
    tls.flush()?;
    let mut response = Vec::new();
    // The server may close without close_notify once the response is out.
    if let Err(e) = tls.read_to_end(&mut response)
        && response.is_empty()
    {
        return Err(e.into());
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response.get(split + 4..).unwrap_or_default().to_vec();
    Ok((head, body, leaf))
}

/// A plain-http request; the whole response.
fn http_get(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn host_port(url: &str) -> &str {
    url.split_once("://").unwrap().1
}

/// The address a log line `... PREFIX ADDR ...` of the server names (waited for: stderr
/// comes after the ready line).
fn logged_addr(sig: &Signalling, prefix: &str) -> String {
    wait_until(prefix, Duration::from_secs(10), || {
        sig.logs().contains(prefix)
    });
    let logs = sig.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(prefix))
        .expect("waited for");
    line.split_once(prefix)
        .unwrap()
        .1
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server on TLS with a certificate of `ca` for localhost and 127.0.0.1, logging at info:
/// it, the certificate and key files, and the certificate.
fn tls_server(ca: &TestCa, extra: &[&str]) -> (Signalling, PathBuf, PathBuf, Vec<u8>) {
    let (cert, key, der) = ca.issue("server");
    let files = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let sig = Signalling::start_logging("info", &[&files[..], extra].concat());
    (sig, cert, key, der)
}

#[test]
fn https_and_wss_carry_a_transfer_when_the_peers_trust_a_private_ca() {
    let ca = TestCa::new();
    let (sig, cert, key, first) = tls_server(&ca, &["--redirect-listen", "127.0.0.1:0"]);
    assert!(sig.url.starts_with("https://"), "{}", sig.url);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("holiday.mov");
    make_file(&file, 2_000_003, 7);

    // Not told about the CA: a clear error that says what to do.
    let untrusted = Peer::spawn(&["--server", &sig.url, "send", file.to_str().unwrap()]);
    let (status, events) = untrusted.finish(Duration::from_secs(30)).unwrap();
    let error = expect_error(status, &events);
    assert!(
        error.contains("certificate is not trusted") && error.contains("--ca-file"),
        "{error}"
    );

    // Told (the sender by variable, the receiver by flag): the transfer goes over wss.
    let ca_file = ca.ca_file();
    let (sender, link, _) = start_sender_env(
        &sig.url,
        &file,
        &[("PUNCHDROP_CA_FILE", ca_file.to_str().unwrap())],
    )
    .unwrap();
    assert!(link.starts_with(&format!("{}/r/", sig.url)), "{link}");
    let receiver = Peer::spawn(&[
        "--ca-file",
        ca_file.to_str().unwrap(),
        "recv",
        "--dir",
        dst.path().to_str().unwrap(),
        &link,
    ]);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    assert_eq!(expect_done(rs, &revents).path.kind, PathKind::Direct);
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("holiday.mov")), hash_file(&file));

    // Pages come over https with HSTS; plain http on the TLS port gets no page.
    let addr = host_port(&sig.url).to_owned();
    let (head, leaf) = https_get(&addr, &ca_file, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age="),
        "{head}"
    );
    assert_eq!(leaf, first);
    let plain = http_get(&addr, "GET / HTTP/1.0\r\n\r\n");
    assert!(
        !plain.starts_with("HTTP/"),
        "http answered on the https port"
    );

    // Plain http elsewhere is sent to the same path over https.
    let redirect = logged_addr(&sig, "http on ");
    let answer = http_get(
        &redirect,
        "GET /r/abc?x=1 HTTP/1.1\r\nHost: drop.test:80\r\nConnection: close\r\n\r\n",
    );
    let port = addr.rsplit(':').next().unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("location: https://drop.test:{port}/r/abc?x=1")),
        "{answer}"
    );

    // SIGHUP reads the files again: new connections get the new certificate...
    let (cert2, key2, second) = ca.issue("renewed");
    std::fs::copy(&key2, &key).unwrap();
    std::fs::copy(&cert2, &cert).unwrap();
    sig.signal("HUP");
    wait_until("the renewed certificate", Duration::from_secs(10), || {
        https_get(&addr, &ca_file, "/healthz").1 == second
    });
    // ...and a broken file keeps the one being served, with a warning.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    sig.signal("HUP");
    wait_until("the warning", Duration::from_secs(10), || {
        sig.logs().contains("the old one stays")
    });
    let (head, leaf) = https_get(&addr, &ca_file, "/healthz");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(leaf, second);
}

#[test]
fn turn_over_tls_relays_a_transfer_with_the_servers_certificate() {
    let ca = TestCa::new();
    let (sig, ..) = tls_server(&ca, &[]);
    let tls = logged_addr(&sig, "TURN over TLS on ");
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("archive.zip");
    make_file(&file, 4 << 20, 9);
    let ca_file = ca.ca_file();
    let ca_arg = ca_file.to_str().unwrap();
    // Both peers relay over TLS only: the last rung, for networks that let only TLS out.
    let relay = ["--relay-only", "--relay-transport", "tls"];
    let (sender, link, _) = start_sender_with(
        {
            let mut cmd = Command::new(bin("native-peer"));
            cmd.env("PUNCHDROP_CA_FILE", ca_arg);
            cmd
        },
        &sig.url,
        &relay,
        &[&file],
    )
    .unwrap();
    let mut args = vec!["--ca-file", ca_arg];
    args.extend(relay);
    let dir = dst.path().to_str().unwrap().to_owned();
    args.extend(["recv", "--dir", &dir, &link]);
    let receiver = Peer::spawn(&args);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    for done in [expect_done(rs, &revents), expect_done(ss, &sevents)] {
        assert_eq!(done.path.kind, PathKind::Relay);
        assert_eq!(
            done.path.protocol,
            protocol::path::Transport::Tls,
            "{:?}",
            done.path
        );
    }
    assert_eq!(hash_file(&dst.path().join("archive.zip")), hash_file(&file));
    // What a stranger without TLS gets on that port: nothing TURN.
    let plain = http_get(&tls, "GET / HTTP/1.0\r\n\r\n");
    assert!(!plain.starts_with("HTTP/"), "{plain}");
    assert!(sig.metric("punchdrop_turn_relayed_bytes_total") >= 4 << 20);
}

#[test]
fn settings_come_from_a_file_a_variable_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("punchdrop.toml");
    std::fs::write(
        &config,
        "max-rooms = 1\nroom_rate = 7\nmsg-rate = 9\nturn-secret = \"do-not-print\"\n\
         stun = [\"stun:stun.example:3478\"]\n",
    )
    .unwrap();
    let print = |extra: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin("signalling"))
            .args(["--config", config.to_str().unwrap(), "--print-config"])
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = print(&["--msg-rate", "11"], &[("PUNCHDROP_ROOM_RATE", "8")]);
    for line in [
        "max-rooms = 1  # config file",
        "room-rate = 8  # environment (PUNCHDROP_ROOM_RATE)",
        "msg-rate = 11  # flag",
        "msg-burst = 200  # default",
        "stun = [\"stun:stun.example:3478\"]  # config file",
        "# turn-secret = (set, not shown)  # config file",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }
    assert!(!shown.contains("do-not-print"), "{shown}");

    // The example the deployment files ship is a valid file.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/server.toml");
    let out = Command::new(bin("signalling"))
        .args(["--config", example.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        shown.contains("listen = \"0.0.0.0:443\"  # config file"),
        "{shown}"
    );

    // The file's values are used: one room at most.
    let sig = Signalling::start_with(&["--config", config.to_str().unwrap()]);
    let mut a = connect(&sig.url);
    assert!(matches!(
        ask(&mut a, create()),
        ServerMessage::Created { .. }
    ));
    let mut b = connect(&sig.url);
    assert!(
        matches!(
            ask(&mut b, create()),
            ServerMessage::Error {
                code: ErrorCode::ServerBusy,
                ..
            }
        ),
        "max-rooms from the file"
    );

    // A bad file: one clear error naming the file and the key; nothing starts.
    for (text, words) in [
        (
            "max-rooms = \"lots\"\n",
            "key `max-rooms`: invalid value 'lots'",
        ),
        ("max-roms = 5\n", "unknown key `max-roms`"),
        ("max-rooms = \n", "not valid TOML"),
        // Values from the file count for the settings that go together.
        (
            "tls-cert = \"/etc/x.pem\"\n",
            "tls-cert and tls-key go together",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(bin("signalling"))
            .args(["--config", config.to_str().unwrap()])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started anyway");
        assert!(err.contains(words), "{text}: {err}");
    }
}

fn admin_get(sig: &Signalling, path: &str) -> String {
    http_get(&sig.admin, &format!("GET {path} HTTP/1.0\r\n\r\n"))
}

#[test]
fn sigterm_drains_rooms_in_progress_and_refuses_new_ones() {
    let mut sig = Signalling::start_logging(
        "info",
        &[
            "--drain-timeout",
            "60",
            "--max-connections-per-client",
            "200",
            "--max-tcp-per-client",
            "400",
            "--room-rate",
            "1000",
        ],
    );
    // 20 rooms in the middle of signalling: 10 joined, 10 waiting for their second peer.
    let mut joined = Vec::new();
    let mut waiting = Vec::new();
    for i in 0..20 {
        let mut creator = connect(&sig.url);
        let ServerMessage::Created { room, .. } = ask(&mut creator, create()) else {
            panic!("room {i} not created");
        };
        if i % 2 == 0 {
            let mut joiner = connect(&sig.url);
            assert!(matches!(
                ask(&mut joiner, join(&room)),
                ServerMessage::Joined { .. }
            ));
            joined.push((creator, joiner));
        } else {
            waiting.push((creator, room));
        }
    }
    assert!(admin_get(&sig, "/readyz").starts_with("HTTP/1.0 200"));

    sig.signal("TERM");
    wait_until("/readyz to say 503", Duration::from_secs(10), || {
        admin_get(&sig, "/readyz").starts_with("HTTP/1.0 503")
    });
    assert!(admin_get(&sig, "/healthz").starts_with("HTTP/1.0 200"));

    // New rooms are refused, saying why.
    let mut late = connect(&sig.url);
    match ask(&mut late, create()) {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::ShuttingDown);
            assert!(message.contains("try again"), "{message}");
        }
        other => panic!("a new room during a drain: {other:?}"),
    }
    // Rooms in progress go on: joined ones signal both ways, waiting ones are joined.
    for (i, (creator, joiner)) in joined.iter_mut().enumerate() {
        relays(creator, joiner, &format!("offer-{i}"));
        relays(joiner, creator, &format!("answer-{i}"));
    }
    for (i, (creator, room)) in waiting.iter_mut().enumerate() {
        let mut joiner = connect(&sig.url);
        assert!(matches!(
            ask(&mut joiner, join(room)),
            ServerMessage::Joined { .. }
        ));
        relays(&mut joiner, creator, &format!("late-{i}"));
    }
    // Longer than relays take to count as idle: only the rooms keep the server up now.
    assert!(
        sig.wait_exit(Duration::from_secs(6)).is_none(),
        "stopped with rooms in progress"
    );

    // The peers leave: the server stops by itself, long before the drain time is up.
    drop(joined);
    drop(waiting);
    drop(late);
    let status = sig
        .wait_exit(Duration::from_secs(20))
        .expect("the drained server stopped");
    assert!(status.success(), "{status:?}");
    assert!(sig.logs().contains("drained"), "{}", sig.logs());
}

#[test]
fn a_relayed_transfer_in_progress_finishes_through_a_drain() {
    let mut sig = Signalling::start_logging("info", &["--drain-timeout", "60"]);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("backup.tar");
    make_file(&file, 24 << 20, 11);
    // Paced so the transfer is still running when the server is asked to stop.
    let (sender, link, _) =
        start_sender_env(&sig.url, &file, &[("PUNCHDROP_TEST_PACE_MIB", "8")]).unwrap();
    let mut receiver = Peer::spawn(&[
        "--relay-only",
        "recv",
        "--dir",
        dst.path().to_str().unwrap(),
        &link,
    ]);
    receiver.wait_for_progress(1 << 20);
    sig.signal("TERM");
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    assert_eq!(done.path.kind, PathKind::Relay);
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("backup.tar")), hash_file(&file));
    let logs = sig.logs();
    assert!(logs.contains("draining"), "{logs}");
    // The peers are gone, their allocations not yet: idle relays do not hold the drain.
    let status = sig
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running after the relay went idle:\n{}", sig.logs()));
    assert!(status.success(), "{status:?}");
    assert!(sig.logs().contains("drained"), "{}", sig.logs());
}

#[test]
fn the_audit_log_records_rooms_relays_and_refusals_without_secrets_or_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let mut sig = Signalling::start_with(&["--audit-log", log.to_str().unwrap()]);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("secret-plans.pdf");
    make_file(&file, 3 << 20, 5);
    let (sender, link, _) = start_sender(&sig.url, &["--relay-only"], &[&file]).unwrap();
    let receiver = Peer::spawn(&[
        "--relay-only",
        "recv",
        "--dir",
        dst.path().to_str().unwrap(),
        &link,
    ]);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    assert_eq!(expect_done(rs, &revents).path.kind, PathKind::Relay);
    expect_done(ss, &sevents);
    // A page of another site may not use this server.
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "{}/ws",
        sig.url.replacen("http", "ws", 1)
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    assert!(
        tungstenite::connect(request).is_err(),
        "a foreign origin got in"
    );
    // Stopped, the server ends its relays and writes what it still holds.
    sig.signal("INT");
    assert!(sig.wait_exit(Duration::from_secs(20)).is_some());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |event: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["event"] == event).collect()
    };
    let room_id = link.split("/r/").nth(1).unwrap().split('#').next().unwrap();
    let secret = link.split('#').nth(1).unwrap();
    let hashed = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(room_id.as_bytes());
        d[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let created = of("room_created");
    assert_eq!(created.len(), 1, "{text}");
    assert_eq!(created[0]["room"], hashed.as_str());
    assert_eq!(created[0]["client"], "127.0.0.x");
    assert_eq!(of("room_joined")[0]["room"], hashed.as_str());
    // The sender's room is held for its receiver to come back; the stop ends it.
    let ended = of("room_ended");
    assert_eq!(ended.len(), 1, "{text}");
    assert_eq!(ended[0]["room"], hashed.as_str());
    assert_eq!(ended[0]["joined"], true);
    assert_eq!(ended[0]["how"], "shutdown");
    assert!(ended[0]["lived_secs"].as_f64().unwrap() > 0.0, "{text}");
    let relayed: u64 = of("turn_allocation")
        .iter()
        .map(|l| l["bytes"].as_u64().unwrap())
        .sum();
    assert!(relayed >= 3 << 20, "relayed {relayed} bytes: {text}");
    let refused = of("refused");
    assert!(
        refused.iter().any(|l| l["reason"] == "foreign_origin"),
        "{text}"
    );
    for l in &lines {
        assert!(l["ts"].as_str().is_some_and(|t| t.starts_with("20")), "{l}");
    }
    for leak in [room_id, secret, "secret-plans", "127.0.0.1"] {
        assert!(
            !text.contains(leak),
            "the audit log holds {leak:?}:\n{text}"
        );
    }
}

/// A child process killed on drop.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_daemon(cmd: &mut Command, what: &str) -> Daemon {
    let mut d = Daemon(
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} (Debian's pebble package): {e}")),
    );
    // One that refuses its arguments says so at once.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = d.0.try_wait().unwrap() {
        let mut err = String::new();
        let _ = d.0.stderr.take().unwrap().read_to_string(&mut err);
        panic!("{what} exited ({status}): {err}");
    }
    // Read what it logs, so a full pipe never stops it.
    let mut err = d.0.stderr.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    d
}

/// Debian's pebble (a test ACME CA that really validates) and its mock DNS, which answers
/// every name with 127.0.0.1: the server gets its certificate by TLS-ALPN-01 on its own
/// https port, and keeps it in its cache across a restart with the CA gone.
#[test]
fn a_certificate_comes_from_an_acme_ca_by_tls_alpn_and_is_kept_in_the_cache() {
    let ca = TestCa::new();
    let (pebble_cert, pebble_key, _) = ca.issue("pebble");
    let dir = tempfile::tempdir().unwrap();
    let (dns, dns_admin, acme, acme_admin, https) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _dns = spawn_daemon(
        Command::new("pebble-challtestsrv").args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-management",
            &format!("127.0.0.1:{dns_admin}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ]),
        "pebble-challtestsrv",
    );
    let config = dir.path().join("pebble.json");
    std::fs::write(
        &config,
        serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{acme_admin}"),
            "certificate": pebble_cert,
            "privateKey": pebble_key,
            "httpPort": 5002,
            // Where the CA checks the challenge: the server's https port.
            "tlsPort": https,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let mut pebble = Some(spawn_daemon(
        Command::new("pebble")
            .args(["-config", config.to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random waits, no rejected nonces: the test checks the flow, not retries.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0"),
        "pebble",
    ));
    let ca_pem = std::fs::read(ca.ca_file()).unwrap();
    let admin = format!("127.0.0.1:{acme_admin}");
    let mut root = Vec::new();
    wait_until(
        "pebble's root",
        Duration::from_secs(20),
        || match https_request(&admin, &ca_pem, "localhost", "/roots/0") {
            Ok((head, body, _)) if head.starts_with("HTTP/1.1 200") => {
                root = body;
                true
            }
            _ => false,
        },
    );

    let cache = dir.path().join("acme");
    let ca_file = ca.ca_file();
    let listen = format!("127.0.0.1:{https}");
    let args = [
        "--acme-domain",
        "drop.test",
        "--acme-cache",
        cache.to_str().unwrap(),
        "--acme-directory",
        &format!("https://127.0.0.1:{acme}/dir"),
        "--acme-ca-file",
        ca_file.to_str().unwrap(),
    ];
    let issued = |sig: &Signalling, within: Duration| {
        let mut leaf = Vec::new();
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok((head, _, l)) = https_request(&listen, &root, "drop.test", "/healthz")
                && head.starts_with("HTTP/1.1 200")
            {
                leaf = l;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            !leaf.is_empty(),
            "no certificate from the ACME CA:\n{}",
            sig.logs()
        );
        leaf
    };
    let mut sig = Signalling::start_at_with(&listen, &args);
    let first = issued(&sig, Duration::from_secs(60));
    // Served first, stored next: the cache holds it once the log says so.
    wait_until(
        "the certificate in the cache",
        Duration::from_secs(10),
        || sig.logs().contains("CertCacheStore"),
    );
    assert!(sig.logs().contains("DeployedNewCert"), "{}", sig.logs());
    assert!(admin_get(&sig, "/readyz").starts_with("HTTP/1.0 200"));
    sig.kill();

    // The CA is gone; the restarted server serves the certificate from its cache.
    pebble.take();
    let sig = Signalling::start_at_with(&listen, &args);
    assert_eq!(issued(&sig, Duration::from_secs(10)), first);
    wait_until(
        "the cached certificate in the log",
        Duration::from_secs(10),
        || sig.logs().contains("DeployedCachedCert"),
    );
}

/// `--server` wins over the host a link names: a user (or a test) reaches another node of
/// the same deployment, or the server through another name.
#[test]
fn the_server_flag_wins_over_the_links_host() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("notes.txt");
    make_file(&file, 300_001, 3);
    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    // The link as another name would have it: nothing listens there.
    let elsewhere = link.replacen(
        host_port(&sig.url),
        &format!("127.0.0.1:{}", free_port()),
        1,
    );
    assert_ne!(elsewhere, link);
    let dir = dst.path().to_str().unwrap();
    let receiver = Peer::spawn(&["--server", &sig.url, "recv", "--dir", dir, &elsewhere]);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("notes.txt")), hash_file(&file));
}
