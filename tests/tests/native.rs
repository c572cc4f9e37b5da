//! native-peer ↔ native-peer through a real signalling server on loopback.

use punchdrop_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn recv_args<'a>(server: &'a str, dir: &'a Path, invitation: &'a str) -> Vec<String> {
    vec![
        "--server".into(),
        server.into(),
        "recv".into(),
        "--dir".into(),
        dir.display().to_string(),
        invitation.into(),
    ]
}

/// `native-peer` sending at most 64 MiB/s (a test hook): a test that stops a peer at about
/// half of 200 MiB then finds the transfer still running, however fast loopback is.
fn paced() -> std::process::Command {
    let mut cmd = std::process::Command::new(bin("native-peer"));
    cmd.env("PUNCHDROP_TEST_PACE_MIB", "64");
    cmd
}

fn spawn(args: &[String]) -> Peer {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Peer::spawn(&argv)
}

#[test]
fn one_file_by_link() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("report.pdf");
    make_file(&file, 3_000_001, 1);
    let (sender, link, _code) = start_sender(&sig.url, &[], &[&file]).unwrap();
    assert!(link.starts_with(&format!("{}/r/", sig.url)), "{link}");
    let receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    let sdone = expect_done(ss, &sevents);
    assert_eq!((done.files, done.bytes), (1, 3_000_001));
    assert_eq!((sdone.files, sdone.bytes), (1, 3_000_001));
    assert_eq!(done.path.kind, PathKind::Direct);
    assert_eq!(sdone.path.kind, PathKind::Direct);
    assert_eq!(hash_file(&dst.path().join("report.pdf")), hash_file(&file));
    assert_eq!(
        tree(dst.path()).len(),
        1,
        "no .part or stray files: {:?}",
        tree(dst.path())
    );
    assert!(
        count::<event::Progress>(&revents) > 0,
        "progress is printed"
    );
    // Both sides showed the same verification words, and every event a receiver prints, in
    // the order they happen.
    let words = |events: &[Event]| event::find::<event::Verify>(events).cloned();
    assert!(words(&revents).is_some());
    assert_eq!(words(&revents), words(&sevents));
    let order: Vec<&str> = revents
        .iter()
        .map(Event::name)
        .filter(|n| *n != "progress")
        .collect();
    assert_eq!(
        order,
        [
            "joined",
            "verify",
            "connected",
            "offer",
            "accepted",
            "first_byte",
            "file_done",
            "done"
        ]
    );
}

#[test]
fn nested_directories_many_files_and_empty_ones() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let root = src.path().join("album");
    for i in 0..40u64 {
        make_file(
            &root.join(format!("day{}/img-{i:03}.raw", i % 4)),
            1000 * i + 17,
            i,
        );
    }
    make_file(&root.join("deep/a/b/c/d/leaf.txt"), 5, 99);
    make_file(&root.join("empty.txt"), 0, 0);
    std::fs::create_dir_all(root.join("nothing/here")).unwrap();
    let single = src.path().join("notes.md");
    make_file(&single, 70_000, 7);

    let (sender, link, _) = start_sender(&sig.url, &[], &[&root, &single]).unwrap();
    let (rs, revents) = spawn(&recv_args(&sig.url, dst.path(), &link))
        .finish(LONG)
        .unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(done.files, 43);
    assert_eq!(count::<event::FileDone>(&revents), 43);
    assert_eq!(count::<event::FileDone>(&sevents), 43);
    assert_eq!(tree(&dst.path().join("album")), tree(&root));
    assert_eq!(hash_file(&dst.path().join("notes.md")), hash_file(&single));
    assert!(
        dst.path().join("album/nothing/here").is_dir(),
        "empty directories arrive too"
    );
}

#[test]
fn large_file_256_mib() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("disk.img");
    make_file(&file, 256 << 20, 3);
    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    let (rs, revents) = spawn(&recv_args(&sig.url, dst.path(), &link))
        .finish(LONG)
        .unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("disk.img")), hash_file(&file));
}

#[test]
fn typed_code_works_and_existing_files_are_not_overwritten() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("a.txt");
    make_file(&file, 1234, 5);
    std::fs::write(dst.path().join("a.txt"), b"precious").unwrap();
    let (sender, link, code) = start_sender(&sig.url, &[], &[&file]).unwrap();
    assert!(code.split('-').count() == 4, "{code}");
    assert!(!link.contains(&code), "the code is not the link secret");
    let (rs, revents) = spawn(&recv_args(&sig.url, dst.path(), &code))
        .finish(LONG)
        .unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(
        std::fs::read(dst.path().join("a.txt")).unwrap(),
        b"precious"
    );
    assert_eq!(hash_file(&dst.path().join("a (1).txt")), hash_file(&file));
}

#[test]
fn receiver_created_room_by_link_and_by_code() {
    for by_code in [false, true] {
        let sig = Signalling::start();
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let file = src.path().join("backup.tar");
        make_file(&file, 2_500_000, 11);
        let dir = dst.path().display().to_string();
        let mut receiver = Peer::spawn(&["--server", &sig.url, "recv", "--dir", &dir]);
        let ready: event::Ready = receiver.wait(Duration::from_secs(10)).unwrap();
        let code = ready
            .code
            .as_ref()
            .expect("native-peer shows a code unless --no-code");
        let invitation = if by_code { code } else { &ready.link };
        let f = file.display().to_string();
        let sender = Peer::spawn(&["--server", &sig.url, "send", "--to", invitation, &f]);
        let (ss, sevents) = sender.finish(LONG).unwrap();
        let (rs, revents) = receiver.finish(LONG).unwrap();
        expect_done(ss, &sevents);
        expect_done(rs, &revents);
        assert_eq!(
            hash_file(&dst.path().join("backup.tar")),
            hash_file(&file),
            "by_code={by_code}"
        );
    }
}

#[test]
fn wrong_code_fails_cleanly_on_both_sides() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("secret.txt");
    make_file(&file, 100, 1);
    let (sender, _link, code) = start_sender(&sig.url, &[], &[&file]).unwrap();
    // Same room number, other words.
    let number = code.split('-').next().unwrap();
    let words: Vec<&str> = code.split('-').skip(1).collect();
    let wrong_word = if words[0] == "acid" { "acorn" } else { "acid" };
    let wrong = format!("{number}-{wrong_word}-{}-{}", words[1], words[2]);
    let (rs, revents) = spawn(&recv_args(&sig.url, dst.path(), &wrong))
        .finish(LONG)
        .unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let rmsg = expect_error(rs, &revents);
    let smsg = expect_error(ss, &sevents);
    assert!(rmsg.contains("wrong"), "receiver: {rmsg}");
    assert!(smsg.contains("wrong"), "sender: {smsg}");
    assert!(tree(dst.path()).is_empty());
    // One try per room: the right code no longer opens it.
    let (rs, revents) = spawn(&recv_args(&sig.url, dst.path(), &code))
        .finish(LONG)
        .unwrap();
    assert!(expect_error(rs, &revents).contains("no such room"));
}

#[test]
fn malformed_links_and_codes_are_explained() {
    let dst = tempfile::tempdir().unwrap();
    for (bad, expect) in [
        (
            "12-notaword-acid-acorn",
            "not one of punchdrop's code words",
        ),
        ("http://127.0.0.1:9/r/room1234", "no secret"),
        ("hello", "123-word-word-word"),
    ] {
        let p = spawn(&recv_args("http://127.0.0.1:9", dst.path(), bad));
        let (s, ev) = p.finish(LONG).unwrap();
        let msg = expect_error(s, &ev);
        assert!(msg.contains(expect), "{bad}: {msg}");
    }
    // Nothing listens there: a clear connection error, not a hang.
    let p = spawn(&recv_args(
        "http://127.0.0.1:9",
        dst.path(),
        "12-acid-acorn-actor",
    ));
    let (s, ev) = p.finish(LONG).unwrap();
    let msg = expect_error(s, &ev);
    assert!(msg.contains("cannot reach the signalling server"), "{msg}");
}

#[test]
fn hostile_names_are_refused_and_nothing_escapes() {
    let outer = tempfile::tempdir().unwrap();
    let dst = outer.path().join("inbox");
    std::fs::create_dir(&dst).unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("x");
    make_file(&file, 10, 1);
    for hostile in [
        "../escaped",
        "/tmp/punchdrop-abs-escape",
        "a/../../escaped",
        "CON",
        "sub/..",
        "x\\..\\..\\y",
        // Reads as "cod.exe" mirrored: a right-to-left override hides the real extension.
        "invoice\u{202E}fdp.exe",
        "zero\u{200B}width",
        "notes: 2024.txt",
    ] {
        let sig = Signalling::start();
        let (sender, link, _) =
            start_sender(&sig.url, &["--offer-name-unchecked", hostile], &[&file]).unwrap();
        let (rs, revents) = spawn(&recv_args(&sig.url, &dst, &link))
            .finish(LONG)
            .unwrap();
        let (ss, sevents) = sender.finish(LONG).unwrap();
        let rmsg = expect_error(rs, &revents);
        let smsg = expect_error(ss, &sevents);
        assert!(rmsg.contains("unsafe file name"), "{hostile}: {rmsg}");
        assert!(
            smsg.contains("cancelled") || smsg.contains("unsafe"),
            "{hostile}: {smsg}"
        );
        assert!(
            tree(outer.path()).keys().all(|k| k == "inbox"),
            "{hostile}: {:?}",
            tree(outer.path())
        );
        assert!(!Path::new("/tmp/punchdrop-abs-escape").exists());
    }
}

#[test]
fn signalling_server_killed_mid_transfer_and_the_file_still_arrives() {
    let mut sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("movie.mkv");
    make_file(&file, 200 << 20, 21);
    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    let mut receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    receiver
        .wait::<event::Progress>(Duration::from_secs(30))
        .unwrap();
    sig.kill();
    // The transfer was not over when the server died: the file is linked into place only once
    // verified, before either side's `done`.
    assert!(
        !dst.path().join("movie.mkv").exists(),
        "the transfer had finished before the kill"
    );
    // The server is really gone.
    assert!(std::net::TcpStream::connect(sig.url.trim_start_matches("http://")).is_err());
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&dst.path().join("movie.mkv")), hash_file(&file));
}

#[test]
fn a_vanished_sender_is_continued_by_a_new_send_into_the_same_folder() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let size: u64 = 200 << 20;
    make_file(&file, size, 8);
    let (mut sender, link, _) = start_sender_with(paced(), &sig.url, &[], &[&file]).unwrap();
    let mut receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    receiver.wait_for_progress(size * 45 / 100);
    // A killed program's socket to the server closes (a network that went away leaves it
    // silent): the server knows the sender stopped once it has not come back for a few
    // seconds, and the receiver, coming back into the room, hears so at once instead of
    // waiting its `--reconnect-timeout` (300 s).
    sender.kill();
    let killed = std::time::Instant::now();
    let (rs, revents) = receiver.finish(LONG).unwrap();
    eprintln!(
        "the receiver stopped {:?} after the sender was killed",
        killed.elapsed()
    );
    let msg = expect_error(rs, &revents);
    assert!(msg.contains("vanished") || msg.contains("lost"), "{msg}");
    assert!(msg.contains("program stopped"), "{msg}");
    assert!(
        msg.contains("kept"),
        "the receiver says the part is kept: {msg}"
    );
    // No final file; the part holds what arrived, ready to be continued.
    let left = tree(dst.path());
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        ["big.bin.part"],
        "{left:?}"
    );
    let held = std::fs::metadata(dst.path().join("big.bin.part"))
        .unwrap()
        .len();
    assert!(held >= size * 45 / 100 && held < size, "held {held}");

    // The person sends again (a new link); the receiver runs again into the same folder.
    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    let receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    let sdone = expect_done(ss, &sevents);
    let resumed = event::find::<event::Resumed>(&revents).expect("a resumed event");
    assert_eq!((resumed.index, resumed.offset), (0, held));
    assert_eq!(event::find::<event::Resumed>(&sevents), Some(resumed));
    assert_eq!(done.bytes, size);
    assert_eq!(done.transferred, size - held);
    assert_eq!(sdone.transferred, size - held);
    assert!(done.transferred <= size * 55 / 100, "{}", done.transferred);
    assert_eq!(hash_file(&dst.path().join("big.bin")), hash_file(&file));
    assert_eq!(tree(dst.path()).len(), 1, "{:?}", tree(dst.path()));
}

/// A receiver killed mid-transfer, its `.part` checked, then what its sender does: `held`.
fn kill_the_receiver_midway(
    sig: &Signalling,
    sender_args: &[&str],
    file: &Path,
    dst: &Path,
) -> (Peer, String, u64) {
    let size = std::fs::metadata(file).unwrap().len();
    let (sender, link, _) = start_sender_with(paced(), &sig.url, sender_args, &[file]).unwrap();
    let mut receiver = spawn(&recv_args(&sig.url, dst, &link));
    receiver.wait_for_progress(size * 45 / 100);
    // SIGKILL: nothing of the receiver runs after this.
    receiver.kill();
    let name = file.file_name().unwrap().to_str().unwrap();
    let held = std::fs::metadata(dst.join(format!("{name}.part")))
        .expect("the part survives the crash")
        .len();
    assert!(held >= size * 45 / 100, "held {held}");
    assert_eq!(tree(dst).len(), 1, "{:?}", tree(dst));
    (sender, link, held)
}

/// Run the receiver again on `link` into `dst`, which holds `held` bytes of `file`, and
/// finish it and `sender`: it continues from what it held (moving at most 55 %), and the
/// file arrives whole. The sender's `done` and events.
fn receive_the_rest(
    sig: &Signalling,
    dst: &Path,
    link: &str,
    file: &Path,
    held: u64,
    sender: Peer,
) -> (event::Done, Vec<Event>) {
    let size = std::fs::metadata(file).unwrap().len();
    let receiver = spawn(&recv_args(&sig.url, dst, link));
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    let sdone = expect_done(ss, &sevents);
    let resumed = event::find::<event::Resumed>(&revents).expect("a resumed event");
    assert_eq!(resumed.offset, held.min(size));
    assert_eq!(done.transferred, size - resumed.offset);
    assert!(done.transferred <= size * 55 / 100, "{}", done.transferred);
    assert_eq!(
        hash_file(&dst.join(file.file_name().unwrap())),
        hash_file(file)
    );
    assert_eq!(tree(dst).len(), 1, "{:?}", tree(dst));
    (sdone, sevents)
}

#[test]
fn a_killed_receiver_run_again_on_the_same_link_continues_where_it_stopped() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("video.mkv");
    let size: u64 = 200 << 20;
    make_file(&file, size, 31);
    let (sender, link, held) = kill_the_receiver_midway(&sig, &[], &file, dst.path());
    // The sender waits in its room; the same command again rejoins it.
    let (sdone, sevents) = receive_the_rest(&sig, dst.path(), &link, &file, held, sender);
    // The sender said what happened, and moved each byte about once.
    assert_reconnected("sender", &sevents);
    assert!(
        event::find::<event::Connected>(&sevents).is_some(),
        "{sevents:?}"
    );
    assert!(
        sdone.transferred >= size && sdone.transferred <= size + (32 << 20),
        "{}",
        sdone.transferred
    );
    assert_eq!(sig.metric("punchdrop_rooms_rejoined_total"), 1);
}

/// While the sender waits for its killed receiver, someone with the room's id but not its
/// secret opens the link: it fails with "wrong", the room stays, and the receiver run
/// again continues into it.
#[test]
fn a_stranger_with_the_wrong_secret_cannot_end_a_room_waiting_for_its_receiver() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let file = src.path().join("video.mkv");
    let size: u64 = 200 << 20;
    make_file(&file, size, 33);
    let (sender, link, held) = kill_the_receiver_midway(&sig, &[], &file, dst.path());
    let stranger = spawn(&recv_args(&sig.url, other.path(), &wrong_secret(&link)));
    let (xs, xevents) = stranger.finish(LONG).unwrap();
    let msg = expect_error(xs, &xevents);
    assert!(msg.contains("wrong"), "stranger: {msg}");
    assert!(tree(other.path()).is_empty(), "{:?}", tree(other.path()));
    receive_the_rest(&sig, dst.path(), &link, &file, held, sender);
}

#[test]
fn a_receiver_that_does_not_come_back_in_time_is_continued_by_the_next_run() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("video.mkv");
    let size: u64 = 200 << 20;
    make_file(&file, size, 32);
    let (sender, _, held) =
        kill_the_receiver_midway(&sig, &["--reconnect-timeout", "1"], &file, dst.path());
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let msg = expect_error(ss, &sevents);
    assert!(msg.contains("did not come back within 1 s"), "{msg}");
    assert!(
        event::find::<event::Reconnecting>(&sevents).is_some(),
        "{sevents:?}"
    );

    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    receive_the_rest(&sig, dst.path(), &link, &file, held, sender);
}

/// A folder to send: `album/0-empty.txt` (nothing to claim once saved, so never received
/// twice either), `album/a.jpg` ([`ALBUM_A`] bytes), `album/b.mov` ([`ALBUM_B`]).
struct Album {
    album: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

const ALBUM_A: u64 = 8 << 20;
const ALBUM_B: u64 = 192 << 20;

impl Album {
    /// The destination holds the album, every file whole, nothing else (no `album (1)`, no
    /// part left).
    fn assert_arrived_in(&self, dst: &Path) {
        assert_eq!(hash_file(&dst.join("album/a.jpg")), hash_file(&self.a));
        assert_eq!(hash_file(&dst.join("album/b.mov")), hash_file(&self.b));
        let left: Vec<String> = tree(dst).into_keys().collect();
        assert_eq!(
            left,
            ["album", "album/0-empty.txt", "album/a.jpg", "album/b.mov"],
            "{left:?}"
        );
    }
}

fn album(dir: &Path, seed: u64) -> Album {
    let album = dir.join("album");
    std::fs::create_dir(&album).unwrap();
    let (a, b) = (album.join("a.jpg"), album.join("b.mov"));
    make_file(&a, ALBUM_A, seed);
    make_file(&b, ALBUM_B, seed + 1);
    std::fs::write(album.join("0-empty.txt"), b"").unwrap();
    Album { album, a, b }
}

/// The NAS case: the sender (who joined) dies inside a folder's second file; the receiver
/// waits in its room, and a new `send --to` of the same folder continues there. The first
/// file, saved already, is claimed whole and not sent again (no `album (1)`), the second
/// continues from its `.part` inside the folder.
#[test]
fn a_restarted_sender_continues_a_folder_without_resending_what_arrived() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let src = album(src.path(), 41);
    let album = src.album.clone();
    let (a_size, b_size) = (ALBUM_A, ALBUM_B);
    let total = a_size + b_size;
    let dir = dst.path().display().to_string();
    let mut receiver = Peer::spawn(&["--server", &sig.url, "recv", "--dir", &dir]);
    let ready: event::Ready = receiver.wait(Duration::from_secs(10)).unwrap();
    let f = album.display().to_string();
    let args = ["--server", &sig.url, "send", "--to", &ready.link, &f];
    let mut sender = Peer::spawn_cmd(paced(), &args);
    receiver.wait_for_progress(total * 45 / 100);
    sender.kill();
    let _ = sender.finish(LONG);
    // The receiver waits in its room; the same command again joins it.
    let sender = Peer::spawn(&["--server", &sig.url, "send", "--to", &ready.link, &f]);
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let sdone = expect_done(ss, &sevents);
    let done = expect_done(rs, &revents);
    src.assert_arrived_in(dst.path());
    // Offer order: album, album/0-empty.txt, album/a.jpg, album/b.mov.
    let resumed: Vec<&event::Resumed> = sevents.iter().filter_map(event::Resumed::of).collect();
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    assert_eq!(
        (resumed[0].index, resumed[0].offset),
        (2, a_size),
        "a.jpg claimed whole"
    );
    assert_eq!(resumed[1].index, 3);
    assert!(
        resumed[1].offset >= total * 45 / 100 - a_size,
        "{resumed:?}"
    );
    // The new sender sent only what was missing; the receiver took each byte about once.
    assert_eq!(sdone.transferred, b_size - resumed[1].offset);
    assert!(
        done.transferred <= total + (16 << 20),
        "{}",
        done.transferred
    );
    assert_reconnected("receiver", &revents);
}

/// A receiver killed inside a folder's second file, then a new `send` and a new `recv` into
/// the same destination: the folder that holds the interrupted run's `.part` is continued in
/// place (no `album (1)`), its file saved already is claimed whole, the part continues.
#[test]
fn a_new_run_continues_a_folder_a_killed_receiver_left() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let src = album(src.path(), 43);
    let album = src.album.clone();
    let (a_size, b_size) = (ALBUM_A, ALBUM_B);
    let total = a_size + b_size;
    let f = album.display().to_string();
    let (mut sender, link, _) = start_sender_with(paced(), &sig.url, &[], &[&album]).unwrap();
    let mut receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    receiver.wait_for_progress(total * 45 / 100);
    // Both programs gone: the person starts over with a new link.
    receiver.kill();
    sender.kill();
    let _ = sender.finish(LONG);
    let held = std::fs::metadata(dst.path().join("album/b.mov.part"))
        .expect("the part survives the crash")
        .len();

    let (sender, link, _) = start_sender(&sig.url, &[], &[Path::new(&f)]).unwrap();
    let receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    expect_done(ss, &sevents);
    src.assert_arrived_in(dst.path());
    // Offer order: album, album/0-empty.txt, album/a.jpg, album/b.mov.
    let resumed: Vec<&event::Resumed> = revents.iter().filter_map(event::Resumed::of).collect();
    let claims: Vec<(u32, u64)> = resumed.iter().map(|r| (r.index, r.offset)).collect();
    assert_eq!(claims, [(2, a_size), (3, held)], "{resumed:?}");
    assert_eq!(done.transferred, b_size - held);
    assert!(done.transferred <= total * 55 / 100, "{}", done.transferred);
}

#[test]
fn a_part_that_differs_from_the_senders_file_starts_over() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("data.bin");
    let size: u64 = 24 << 20;
    make_file(&file, size, 21);
    // Parts from earlier runs: one whose beginning was changed on disk, one that matches.
    let mut part = std::fs::read(&file).unwrap();
    part.truncate(10 << 20);
    part[5_000_000] ^= 1;
    std::fs::write(dst.path().join("data.bin.part"), &part).unwrap();
    let other = src.path().join("other.bin");
    make_file(&other, 3 << 20, 22);
    let mut good = std::fs::read(&other).unwrap();
    good.truncate(1 << 20);
    std::fs::write(dst.path().join("other.bin.part"), &good).unwrap();

    let (sender, link, _) = start_sender(&sig.url, &[], &[&file, &other]).unwrap();
    let receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let done = expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(
        event::find::<event::FileRestarted>(&revents),
        Some(&event::FileRestarted { index: 0 })
    );
    assert_eq!(
        event::find::<event::Resumed>(&revents),
        Some(&event::Resumed {
            index: 1,
            offset: 1 << 20
        })
    );
    assert_eq!(done.transferred, size + (2 << 20));
    assert_eq!(hash_file(&dst.path().join("data.bin")), hash_file(&file));
    assert_eq!(hash_file(&dst.path().join("other.bin")), hash_file(&other));
    assert_eq!(tree(dst.path()).len(), 2, "{:?}", tree(dst.path()));
}

/// Run the receiver with its destination on a small tmpfs in a private mount namespace; list
/// what is left there before the namespace goes away.
fn recv_on_tmpfs(
    server: &str,
    link: &str,
    size: &str,
    skip_space_check: bool,
) -> (std::process::ExitStatus, Vec<Event>, String) {
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().display().to_string();
    let script = format!(
        "mount -t tmpfs -o size={size} punchdrop-test {m} || exit 97; \"$0\" \"$@\"; rc=$?; \
         echo LISTING >&2; find {m} -mindepth 1 >&2; exit $rc"
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(bin("native-peer"));
    if skip_space_check {
        cmd.env("PUNCHDROP_SKIP_SPACE_CHECK", "1");
    }
    let p = Peer::spawn_cmd(cmd, &["--server", server, "recv", "--dir", &m, link]);
    let (status, events, stderr) = p.finish_all(LONG).unwrap();
    assert_ne!(status.code(), Some(97), "could not mount a tmpfs: {stderr}");
    let listing = stderr
        .split("LISTING")
        .nth(1)
        .unwrap_or_else(|| panic!("no listing: {stderr}"))
        .trim()
        .to_string();
    (status, events, listing)
}

#[test]
fn receiver_disk_too_small_or_full_fails_cleanly() {
    assert!(
        is_root(),
        "needs root for a private tmpfs mount (CI runs as root)"
    );
    for skip_space_check in [false, true] {
        let sig = Signalling::start();
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("huge.iso");
        make_file(&file, 24 << 20, 4);
        let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
        let (rs, revents, left) = recv_on_tmpfs(&sig.url, &link, "8m", skip_space_check);
        assert!(left.is_empty(), "nothing is left on the full disk: {left}");
        let (ss, sevents) = sender.finish(LONG).unwrap();
        let rmsg = expect_error(rs, &revents);
        let smsg = expect_error(ss, &sevents);
        if skip_space_check {
            assert!(rmsg.contains("disk is full"), "{rmsg}");
            assert!(
                smsg.contains("NoSpace") || smsg.contains("disk is full"),
                "{smsg}"
            );
        } else {
            assert!(rmsg.contains("not enough free space"), "{rmsg}");
            assert!(
                smsg.contains("declined") && smsg.contains("not enough free space"),
                "{smsg}"
            );
        }
    }
}

#[test]
fn ctrl_c_on_the_receiver_tells_the_sender_and_leaves_no_part_file() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("long.bin");
    make_file(&file, 200 << 20, 12);
    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    let mut receiver = spawn(&recv_args(&sig.url, dst.path(), &link));
    receiver
        .wait::<event::Progress>(Duration::from_secs(30))
        .unwrap();
    let ok = Command::new("kill")
        .args(["-INT", &receiver.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let rmsg = expect_error(rs, &revents);
    let smsg = expect_error(ss, &sevents);
    assert!(rmsg.contains("interrupted"), "{rmsg}");
    assert!(
        smsg.contains("stopped the transfer"),
        "the sender is told why: {smsg}"
    );
    assert!(
        tree(dst.path()).is_empty(),
        "no .part left: {:?}",
        tree(dst.path())
    );
}

#[test]
fn receiver_limits_stdin_links_and_new_folders() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("movie.mkv");
    make_file(&file, 100_000, 31);

    // Larger than `--max-bytes`: declined with the reason, nothing written.
    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    let d = dst.path().display().to_string();
    let receiver = Peer::spawn(&[
        "--server",
        &sig.url,
        "recv",
        "--max-bytes",
        "99999",
        "--dir",
        &d,
        &link,
    ]);
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    let rmsg = expect_error(rs, &revents);
    let smsg = expect_error(ss, &sevents);
    assert!(rmsg.contains("takes at most 99999"), "{rmsg}");
    assert!(
        smsg.contains("declined") && smsg.contains("takes at most 99999"),
        "{smsg}"
    );
    assert!(tree(dst.path()).is_empty(), "{:?}", tree(dst.path()));

    // The link on standard input (`recv -`: kept out of the shell's history), into a folder
    // that does not exist yet.
    let (sender, link, _) = start_sender(&sig.url, &[], &[&file]).unwrap();
    let inbox = dst.path().join("new/inbox");
    let d = inbox.display().to_string();
    let receiver = Peer::spawn_with_input(
        &["--server", &sig.url, "recv", "--dir", &d, "-"],
        &format!("{link}\n"),
    );
    let (rs, revents) = receiver.finish(LONG).unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert_eq!(hash_file(&inbox.join("movie.mkv")), hash_file(&file));
}

#[test]
fn a_symlink_planted_in_the_destination_leads_nowhere() {
    let sig = Signalling::start();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let album = src.path().join("album");
    make_file(&album.join("a.jpg"), 1000, 1);
    make_file(&album.join("sub/b.jpg"), 2000, 2);
    // Someone who can write to the destination points `album` elsewhere.
    std::os::unix::fs::symlink(outside.path(), dst.path().join("album")).unwrap();
    let (sender, link, _) = start_sender(&sig.url, &[], &[&album]).unwrap();
    let (rs, revents) = spawn(&recv_args(&sig.url, dst.path(), &link))
        .finish(LONG)
        .unwrap();
    let (ss, sevents) = sender.finish(LONG).unwrap();
    expect_done(rs, &revents);
    expect_done(ss, &sevents);
    assert!(
        tree(outside.path()).is_empty(),
        "{:?}",
        tree(outside.path())
    );
    assert_eq!(tree(&dst.path().join("album (1)")), tree(&album));
}
