//! Logs and metrics never carry file names, link secrets, codes or full client addresses.

use punchdrop_e2e::*;

#[test]
fn server_logs_and_metrics_hold_no_names_secrets_or_client_addresses() {
    // Debug level: the most the server ever says.
    let sig = Signalling::start_logging("debug", &[]);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let name = "Quarterly-Secret-Plans.xlsx";
    let file = src.path().join(name);
    make_file(&file, 200_000, 9);
    // One direct and one relayed transfer, so both the rooms and the TURN paths log.
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
        std::thread::sleep(std::time::Duration::from_millis(200));
        let logs = sig.logs();
        let secret = link.rsplit('#').next().unwrap();
        let room = link.rsplit('/').next().unwrap().split('#').next().unwrap();
        let words = code.split('-').skip(1).collect::<Vec<_>>().join("-");
        for (what, needle) in [
            ("file name", name),
            ("link secret", secret),
            ("code words", &words),
        ] {
            assert!(
                !logs.contains(needle),
                "server logs contain the {what}:\n{logs}"
            );
        }
        let metrics = sig.metrics_text();
        assert!(
            !metrics.contains(room) && !metrics.contains("127.0.0.1"),
            "{metrics}"
        );
        // Client addresses appear only redacted; the one full address allowed is the
        // server's own, in its start-up lines.
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
}
