use super::*;
use crate::path::{
    CandidateType, IpFamily, MapProtocol, PairView, PathKind, PortmapState, RelayReason, Transport,
};
use std::collections::{BTreeMap, BTreeSet};

fn path() -> PathReport {
    PathReport {
        kind: PathKind::Relay,
        local: CandidateType::Relay,
        remote: CandidateType::Srflx,
        protocol: Transport::Udp,
        family: Some(IpFamily::Ipv4),
        reason: Some(RelayReason::NoDirectPair),
        portmap: Some(PortmapState::Mapped),
        mapped_by: Some(MapProtocol::Upnp),
        peer: Some(PairView {
            kind: PathKind::Relay,
            local: CandidateType::Prflx,
            remote: CandidateType::Relay,
            protocol: Transport::Udp,
        }),
    }
}

/// One of each event, with the JSON it must be. Changing a string is an interface change.
fn golden() -> Vec<(Event, &'static str)> {
    vec![
        (
            Ready {
                link: "http://h/r/room#s".into(),
                code: Some("1-a-b-c".into()),
            }
            .into(),
            r#"{"event":"ready","link":"http://h/r/room#s","code":"1-a-b-c"}"#,
        ),
        (
            Ready {
                link: "http://h/r/room#s".into(),
                code: None,
            }
            .into(),
            r#"{"event":"ready","link":"http://h/r/room#s"}"#,
        ),
        (
            Code {
                code: "1-a-b-c".into(),
            }
            .into(),
            r#"{"event":"code","code":"1-a-b-c"}"#,
        ),
        (Event::Joined, r#"{"event":"joined"}"#),
        (
            Verify {
                words: ["acid".into(), "acorn".into(), "actor".into()],
            }
            .into(),
            r#"{"event":"verify","words":["acid","acorn","actor"]}"#,
        ),
        (Event::Pick, r#"{"event":"pick"}"#),
        (
            Connected {
                path: path(),
                ms_since_room: 12.5,
            }
            .into(),
            r#"{"event":"connected","path":"relay","local":"relay","remote":"srflx","protocol":"udp","family":"ipv4","reason":"no_direct_pair","portmap":"mapped","mapped_by":"upnp","peer":{"path":"relay","local":"prflx","remote":"relay","protocol":"udp"},"ms_since_room":12.5}"#,
        ),
        (
            Connected {
                path: PathReport {
                    family: None,
                    portmap: Some(PortmapState::Failed),
                    mapped_by: None,
                    ..path()
                },
                ms_since_room: 12.5,
            }
            .into(),
            r#"{"event":"connected","path":"relay","local":"relay","remote":"srflx","protocol":"udp","reason":"no_direct_pair","portmap":"failed","peer":{"path":"relay","local":"prflx","remote":"relay","protocol":"udp"},"ms_since_room":12.5}"#,
        ),
        (
            Reconnecting {
                reason: ReconnectReason::LinkLost,
            }
            .into(),
            r#"{"event":"reconnecting","reason":"link_lost"}"#,
        ),
        (
            Reconnecting {
                reason: ReconnectReason::PeerLeft,
            }
            .into(),
            r#"{"event":"reconnecting","reason":"peer_left"}"#,
        ),
        (
            Reconnecting {
                reason: ReconnectReason::PathDown,
            }
            .into(),
            r#"{"event":"reconnecting","reason":"path_down"}"#,
        ),
        (
            Reconnected {
                path: path(),
                ms_since_room: 3.0,
            }
            .into(),
            r#"{"event":"reconnected","path":"relay","local":"relay","remote":"srflx","protocol":"udp","family":"ipv4","reason":"no_direct_pair","portmap":"mapped","mapped_by":"upnp","peer":{"path":"relay","local":"prflx","remote":"relay","protocol":"udp"},"ms_since_room":3.0}"#,
        ),
        (
            Offer {
                files: 1,
                bytes: 3,
                entries: vec![
                    OfferItem {
                        path: "d".into(),
                        size: 0,
                        dir: true,
                    },
                    OfferItem {
                        path: "d/a".into(),
                        size: 3,
                        dir: false,
                    },
                ],
            }
            .into(),
            r#"{"event":"offer","files":1,"bytes":3,"entries":[{"path":"d","size":0,"dir":true},{"path":"d/a","size":3}]}"#,
        ),
        (
            Accepted { files: 1, bytes: 3 }.into(),
            r#"{"event":"accepted","files":1,"bytes":3}"#,
        ),
        (
            Resumed {
                index: 2,
                offset: 1 << 20,
            }
            .into(),
            r#"{"event":"resumed","index":2,"offset":1048576}"#,
        ),
        (
            FileRestarted { index: 2 }.into(),
            r#"{"event":"file_restarted","index":2}"#,
        ),
        (
            FirstByte { ms_since_room: 7.0 }.into(),
            r#"{"event":"first_byte","ms_since_room":7.0}"#,
        ),
        (
            Progress { bytes: 1, total: 3 }.into(),
            r#"{"event":"progress","bytes":1,"total":3}"#,
        ),
        (
            FileDone { index: 1 }.into(),
            r#"{"event":"file_done","index":1}"#,
        ),
        (
            Done {
                files: 1,
                bytes: 3,
                transferred: 2,
                seconds: 0.5,
                path: PathReport {
                    kind: PathKind::Mapped,
                    local: CandidateType::Host,
                    remote: CandidateType::Prflx,
                    protocol: Transport::Udp,
                    family: Some(IpFamily::Ipv6),
                    reason: None,
                    portmap: Some(PortmapState::Mapped),
                    mapped_by: Some(MapProtocol::Pcp),
                    peer: Some(PairView {
                        kind: PathKind::Direct,
                        local: CandidateType::Srflx,
                        remote: CandidateType::Host,
                        protocol: Transport::Udp,
                    }),
                },
            }
            .into(),
            r#"{"event":"done","files":1,"bytes":3,"transferred":2,"seconds":0.5,"path":"mapped","local":"host","remote":"prflx","protocol":"udp","family":"ipv6","reason":null,"portmap":"mapped","mapped_by":"pcp","peer":{"path":"direct","local":"srflx","remote":"host","protocol":"udp"}}"#,
        ),
        (Event::Declined, r#"{"event":"declined"}"#),
        (
            Event::error("wrong code or link"),
            r#"{"event":"error","message":"wrong code or link"}"#,
        ),
    ]
}

#[test]
fn events_golden() {
    for (event, json) in golden() {
        assert_eq!(event.to_json(), json);
        assert_eq!(
            serde_json::from_str::<Event>(json).unwrap(),
            event,
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(json).unwrap()["event"],
            event.name()
        );
    }
}

/// Every variant serde knows, from its own error message for an unknown tag: a new variant
/// cannot be missed by the tests below.
fn variant_names() -> BTreeSet<String> {
    let err = serde_json::from_str::<Event>(r#"{"event":"__none"}"#)
        .unwrap_err()
        .to_string();
    let list = err
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected serde message: {err}"));
    list.split(',')
        .map(|s| {
            s.trim()
                .trim_matches(|c: char| c == '`' || !c.is_ascii_graphic())
                .split('`')
                .next()
                .unwrap()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn golden_covers_every_event() {
    let covered: BTreeSet<String> = golden().iter().map(|(e, _)| e.name().to_string()).collect();
    assert_eq!(covered, variant_names());
}

/// Field names per event, from the golden JSON (all its cases, optional fields included).
fn fields() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (e, json) in golden() {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let keys = v
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "event")
            .cloned();
        out.entry(e.name().to_string()).or_default().extend(keys);
    }
    out
}

/// The README's table of events, between `<!-- events -->` and `<!-- /events -->`: one row
/// per event, `| `name` | `field`, `field` |`.
fn readme_events() -> BTreeMap<String, BTreeSet<String>> {
    let readme = include_str!("../../../README.md");
    let table = readme
        .split("<!-- events -->")
        .nth(1)
        .and_then(|s| s.split("<!-- /events -->").next())
        .expect("README.md has an events table between <!-- events --> and <!-- /events -->");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            let name = ticked(cells[1]).remove(0);
            (name, ticked(cells[2]).into_iter().collect())
        })
        .collect()
}

#[test]
fn readme_lists_exactly_these_events_and_fields() {
    assert_eq!(readme_events(), fields());
}
