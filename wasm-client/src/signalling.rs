//! The browser's WebSocket to the signalling server, as a stream of [`WsEvent`]s. What is
//! said on it is decided by `protocol::rendezvous`; this only carries text.

use futures::channel::mpsc;
use protocol::signal::ClientMessage;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::js::Listener;

pub enum WsEvent {
    Open,
    Text(String),
    Closed,
}

/// A WebSocket to the signalling server; closed on drop.
pub struct Ws {
    ws: Option<WebSocket>,
    pub events: mpsc::UnboundedReceiver<WsEvent>,
    _listeners: Vec<Listener>,
    /// Kept by a socket that is not there ([`Ws::none`]), so its events stay pending.
    _quiet: Option<mpsc::UnboundedSender<WsEvent>>,
}

impl std::fmt::Debug for Ws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ws").finish_non_exhaustive()
    }
}

impl Drop for Ws {
    fn drop(&mut self) {
        if let Some(ws) = &self.ws {
            let _ = ws.close();
        }
    }
}

impl Ws {
    /// Start connecting to the server at `base` (its origin). A URL the browser refuses
    /// shows up as [`WsEvent::Closed`], as an unreachable server does.
    pub fn open(base: &str) -> Ws {
        let (tx, events) = mpsc::unbounded();
        let ws = protocol::invite::websocket_url(base)
            .ok()
            .and_then(|url| WebSocket::new(&url).ok());
        let Some(ws) = ws else {
            let _ = tx.unbounded_send(WsEvent::Closed);
            return Ws {
                ws: None,
                events,
                _listeners: Vec::new(),
                _quiet: None,
            };
        };
        let t = ws.unchecked_ref();
        let (a, b, c, d) = (tx.clone(), tx.clone(), tx.clone(), tx);
        let listeners = vec![
            Listener::new(t, "open", move |_: web_sys::Event| {
                let _ = a.unbounded_send(WsEvent::Open);
            }),
            Listener::new(t, "message", move |e: MessageEvent| {
                if let Some(s) = e.data().as_string() {
                    let _ = b.unbounded_send(WsEvent::Text(s));
                }
            }),
            Listener::new(t, "close", move |_: CloseEvent| {
                let _ = c.unbounded_send(WsEvent::Closed);
            }),
            Listener::new(t, "error", move |_: web_sys::Event| {
                let _ = d.unbounded_send(WsEvent::Closed);
            }),
        ];
        Ws {
            ws: Some(ws),
            events,
            _listeners: listeners,
            _quiet: None,
        }
    }

    /// No socket, and nothing to report about it: between a closed socket and the next.
    pub fn none() -> Ws {
        let (tx, events) = mpsc::unbounded();
        Ws {
            ws: None,
            events,
            _listeners: Vec::new(),
            _quiet: Some(tx),
        }
    }

    /// Send; `false` if the socket is not open.
    pub fn send(&self, msg: &ClientMessage) -> bool {
        self.ws
            .as_ref()
            .is_some_and(|ws| ws.send_with_str(&msg.to_json()).is_ok())
    }
}
