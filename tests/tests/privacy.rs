//! Logs and metrics never carry file names, link secrets, codes or full client addresses.

use punchdrop_e2e::*;

#[test]
fn server_logs_and_metrics_hold_no_names_secrets_or_client_addresses() {
    // Debug level: the most the server ever says.
    let mut sig = Signalling::start_logging("debug", &[]);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let name = "Quarterly-Secret-Plans.xlsx";
    let file = src.path().join(name);
    make_file(&file, 200_000, 9);
    // One direct and one relayed transfer, so both the rooms and the TURN paths log.
    let mut secrets = vec![("file name", name.to_string())];
    for flags in [&[][..], &["--relay-only"][..]] {
        let (sender, link, code) = start_sender(&sig.url, flags, &[&file]).unwrap();
        let dir = dst.path().join(format!("{}", flags.len()));
        std::fs::create_dir(&dir).unwrap();
        let d = dir.display().to_string();
        let mut args = flags.to_vec();
        args.extend(["recv", "--dir", &d, &link]);
        let (rs, revents) = Peer::spawn(&args).finish(LONG).unwrap();
        expect_done(rs, &revents);
        let (ss, sevents) = sender.finish(LONG).unwrap();
        expect_done(ss, &sevents);
        let secret = link.rsplit('#').next().unwrap().to_string();
        let room = link
            .rsplit('/')
            .next()
            .unwrap()
            .split('#')
            .next()
            .unwrap()
            .to_string();
        let words = code.split('-').skip(1).collect::<Vec<_>>().join("-");
        secrets.extend([
            ("link secret", secret),
            ("code words", words),
            ("room id", room),
        ]);
    }
    let metrics = sig.metrics_text();
    // Everything the server ever logged: it is stopped first, so nothing is still in flight.
    let logs = sig.stop_and_logs();
    for (what, needle) in &secrets {
        // Room ids may be logged (they are not secrets); metrics carry counts only.
        if *what == "room id" {
            assert!(!metrics.contains(needle.as_str()), "{metrics}");
        } else {
            assert!(
                !logs.contains(needle.as_str()),
                "server logs contain the {what}:\n{logs}"
            );
        }
    }
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");
    // Client addresses appear only redacted; the one full address allowed is the server's
    // own, in its start-up lines.
    for line in logs
        .lines()
        .filter(|l| !l.contains("listening") && !l.contains("bundled TURN"))
    {
        assert!(
            !line.contains("127.0.0.1"),
            "a full address in the server log: {line}"
        );
    }
    assert!(
        logs.contains("127.0.0.x"),
        "the log does speak of clients, redacted:\n{logs}"
    );
}
