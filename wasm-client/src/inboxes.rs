//! What the page shows of inboxes before dropping: online or not, and their names
//! (`look`, [`protocol::signal::ClientMessage::Look`]), sealed with each link's secret and
//! opened here; the server never reads them.

use futures::{FutureExt as _, StreamExt as _};
use protocol::inbox::InboxLink;
use protocol::signal::{ClientMessage, SIGNAL_VERSION, ServerMessage};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::js;
use crate::signalling::{Ws, WsEvent};

/// How long a server has to answer.
const LOOK_WITHIN: Duration = Duration::from_secs(5);

/// For each of `links`: online (`None`: not a link, or its server did not answer) and
/// name (if it has one and the link's secret opens it).
pub async fn look(links: &[String]) -> Vec<(Option<bool>, Option<String>)> {
    let parsed: Vec<Option<InboxLink>> = links
        .iter()
        .map(|l| InboxLink::parse(l.trim()).ok())
        .collect();
    let mut by_server: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for link in parsed.iter().flatten() {
        let ids = by_server.entry(link.server.as_str()).or_default();
        ids.push(link.id.to_string());
    }
    let mut answers: BTreeMap<(String, String), (bool, Option<String>)> = BTreeMap::new();
    for (server, ids) in by_server {
        let ids: Vec<String> = ids.into_iter().take(protocol::signal::MAX_LOOK).collect();
        for s in ask(server, &ids).await.unwrap_or_default() {
            answers.insert((server.to_string(), s.inbox), (s.online, s.name));
        }
    }
    parsed
        .iter()
        .map(|link| {
            let Some(link) = link else {
                return (None, None);
            };
            match answers.get(&(link.server.clone(), link.id.to_string())) {
                Some((online, sealed)) => {
                    let name = sealed
                        .as_deref()
                        .and_then(|s| protocol::inbox::open_name(&link.secret, s));
                    (Some(*online), name)
                }
                None => (None, None),
            }
        })
        .collect()
}

/// Ask `server` about `ids`: `None` if it does not answer in time.
async fn ask(server: &str, ids: &[String]) -> Option<Vec<protocol::signal::InboxStatus>> {
    let mut ws = Ws::open(server);
    let until = js::now() + LOOK_WITHIN;
    loop {
        let ev = futures::select! {
            ev = ws.events.next() => ev?,
            _ = js::sleep_until(Some(until)).fuse() => return None,
        };
        match ev {
            WsEvent::Open => {
                let look = ClientMessage::Look {
                    version: SIGNAL_VERSION,
                    inboxes: ids.to_vec(),
                };
                if !ws.send(&look) {
                    return None;
                }
            }
            WsEvent::Text(t) => match serde_json::from_str(&t) {
                Ok(ServerMessage::Inboxes { inboxes }) => return Some(inboxes),
                Ok(ServerMessage::Error { .. }) | Err(_) => return None,
                Ok(_) => {}
            },
            WsEvent::Closed => return None,
        }
    }
}
