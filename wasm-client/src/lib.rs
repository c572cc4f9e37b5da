//! punchdrop in the browser: Rust compiled to wasm32 that drives the browser's
//! RTCPeerConnection and runs the same signalling, PAKE sealing and transfer state machines
//! as the native peer (all from `protocol`). The page (`web/`) is a thin shell: it collects
//! files, shows events and provides storage sinks; it never speaks the protocol itself.
//!
//! JS API ([`Client`]):
//! - `new Client(serverOrigin, onEvent)`; `onEvent` receives plain objects, the events of
//!   `protocol::event` (the README lists them).
//! - `share(entries)`: create a room for `[{path, file}|{path, dir: true}]`; emits `ready`
//!   with the link and code, resolves when the receiver has every file.
//! - `open(linkOrCode)`: join a room. If the other side sends, emits `offer` and waits for
//!   `accept(sinkFactory)` or `decline()`; if it receives, emits `pick` and waits for
//!   `provideFiles(entries)`.
//!
//! The rendezvous is `protocol::rendezvous` driven by [`rendezvous`]; the transfer is
//! `protocol::transfer` driven by [`transfer`].
//! - `cancel()` stops whatever runs; the other side is told.
//!
//! Invariants: one session per client at a time; every browser callback is owned and freed
//! ([`js::Listener`]); received bytes go to a sink as they arrive, never into one buffer.

mod error;
mod events;
mod inboxes;
mod js;
mod peer;
mod rendezvous;
mod signalling;
mod transfer;

use futures::channel::mpsc;
use protocol::event::Event;
use protocol::inbox::InboxLink;
use protocol::invite::Invitation;
use protocol::rendezvous::{Config, REJOIN_DEFAULT, Rendezvous, Want};
use protocol::signal::TransferRole;
use protocol::transfer::OfferEntry;
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use error::{Error, Result};
use events::Events;
use rendezvous::Link;
use transfer::{Carry, SinkFactory, Source};

/// What the page tells a running session.
pub(crate) enum Command {
    /// Files to send (answer to `pick`).
    Files(Vec<Source>),
    /// Save the offered files here.
    Accept(SinkFactory),
    /// Show a code as well as the link (creator, while waiting).
    ShowCode,
    Decline,
    Cancel,
}

#[wasm_bindgen(start)]
fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("punchdrop: {info}").into());
    }));
}

/// A QR code of `text` as an SVG document (for the share link).
#[wasm_bindgen(js_name = qrSvg)]
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

/// One page's punchdrop client.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Client {
    server: String,
    events: Events,
    cmds: RefCell<Option<mpsc::UnboundedSender<Command>>>,
}

#[wasm_bindgen]
impl Client {
    /// `server` is the signalling server's origin, e.g. `https://drop.example`.
    #[wasm_bindgen(constructor)]
    pub fn new(server: String, on_event: js_sys::Function) -> Client {
        Client {
            server,
            events: Events::new(on_event),
            cmds: RefCell::new(None),
        }
    }

    /// Share `entries` (`[{path, file}]` or `[{path, dir: true}]`).
    pub fn share(&self, entries: js_sys::Array) -> Result<js_sys::Promise, JsValue> {
        let sources = parse_sources(&entries)?;
        let rx = self.begin();
        let events = self.events.clone();
        let rv = Rendezvous::create(&self.server, Want::Send, held(), js::now());
        Ok(self.run(share_flow(rv, (sources, None), events, rx)))
    }

    /// Drop `entries` into the inbox `link` names (`…/i/ID#SECRET`): a room made for the
    /// drop, which the inbox joins with its secret. `device` (optional): this browser's key
    /// for that inbox, `{key: Uint8Array(32) public key, name, pair: code|null, sign:
    /// bytes => Promise<Uint8Array(64)>}` (an Ed25519 WebCrypto key the page keeps).
    #[wasm_bindgen(js_name = dropTo)]
    pub fn drop_to(
        &self,
        link: String,
        entries: js_sys::Array,
        device: JsValue,
    ) -> Result<js_sys::Promise, JsValue> {
        let sources = parse_sources(&entries)?;
        let inbox = InboxLink::parse(link.trim()).map_err(Error::from)?;
        let device = transfer::Device::from_js(&device)?;
        let rx = self.begin();
        let events = self.events.clone();
        let rv = Rendezvous::knock(&inbox, Want::Send, held(), js::now());
        Ok(self.run(share_flow(rv, (sources, device), events, rx)))
    }

    /// Join the room of a share link or typed code.
    pub fn open(&self, invitation: String) -> js_sys::Promise {
        let rx = self.begin();
        let (server, events) = (self.server.clone(), self.events.clone());
        self.run(open_flow(server, invitation, events, rx))
    }

    /// Accept the pending offer and save through `sinks`.
    pub fn accept(&self, sinks: SinkFactory) {
        self.command(Command::Accept(sinks));
    }

    pub fn decline(&self) {
        self.command(Command::Decline);
    }

    /// The files to send, after a `pick` event.
    #[wasm_bindgen(js_name = provideFiles)]
    pub fn provide_files(&self, entries: js_sys::Array) -> Result<(), JsValue> {
        let sources = parse_sources(&entries)?;
        self.command(Command::Files(sources));
        Ok(())
    }

    pub fn cancel(&self) {
        self.command(Command::Cancel);
    }

    /// Give the waiting room a code too (a `code` event follows). A share shows only its link
    /// until asked: a room without a code has no number anyone could guess.
    #[wasm_bindgen(js_name = showCode)]
    pub fn show_code(&self) {
        self.command(Command::ShowCode);
    }
}

impl Client {
    fn begin(&self) -> mpsc::UnboundedReceiver<Command> {
        let (tx, rx) = mpsc::unbounded();
        if let Some(old) = self.cmds.replace(Some(tx)) {
            let _ = old.unbounded_send(Command::Cancel);
        }
        rx
    }

    fn command(&self, c: Command) {
        if let Some(tx) = self.cmds.borrow().as_ref() {
            let _ = tx.unbounded_send(c);
        }
    }

    /// Run a flow as a promise; its error is also emitted as an `error` event.
    fn run(&self, flow: impl Future<Output = Result<()>> + 'static) -> js_sys::Promise {
        let events = self.events.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            match flow.await {
                Ok(()) => Ok(JsValue::UNDEFINED),
                Err(e) => {
                    events.emit(&Event::error(e.to_string()));
                    Err(e.into())
                }
            }
        })
    }
}

/// Which of the inboxes `links` (`…/i/ID#SECRET`, one server each) are online, and their
/// names (sealed with each link's secret, opened here): `[{online, name}]` in their order,
/// `online: null` for an inbox whose server did not answer.
#[wasm_bindgen(js_name = lookInboxes)]
pub fn look_inboxes(links: js_sys::Array) -> js_sys::Promise {
    let links: Vec<String> = links.iter().filter_map(|l| l.as_string()).collect();
    wasm_bindgen_futures::future_to_promise(async move {
        let found = inboxes::look(&links).await;
        let json: Vec<serde_json::Value> = found
            .into_iter()
            .map(|(online, name)| serde_json::json!({"online": online, "name": name}))
            .collect();
        Ok(js::to_js(&serde_json::Value::Array(json)))
    })
}

fn parse_sources(entries: &js_sys::Array) -> Result<Vec<Source>> {
    let mut out = Vec::with_capacity(entries.length() as usize);
    for v in entries.iter() {
        let path = js::get_str(&v, "path")
            .ok_or(Error::Usage("every entry needs a path"))?
            .trim_start_matches('/')
            .to_string();
        if js::get(&v, "dir").as_bool() == Some(true) {
            out.push(Source {
                entry: OfferEntry::dir(path),
                file: None,
            });
            continue;
        }
        let file: web_sys::File = js::get(&v, "file")
            .dyn_into()
            .map_err(|_| Error::Usage("every file entry needs a File"))?;
        out.push(Source {
            entry: OfferEntry::file(path, file.size() as u64),
            file: Some(file),
        });
    }
    if out.is_empty() {
        return Err(Error::Usage("nothing to send"));
    }
    Ok(out)
}

/// Send (with the device proven to an inbox) or receive over an open link, as the
/// rendezvous settled.
async fn transfer_over(
    link: &mut Link,
    sources: Option<(Vec<Source>, Option<&transfer::Device>)>,
    events: &Events,
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    carry: &mut Carry,
) -> Result<()> {
    let summary = match (link.role, sources) {
        (TransferRole::Sender, Some((sources, device))) => {
            Some(transfer::send(link, sources, device, events, cmds, carry).await?)
        }
        (TransferRole::Sender, None) => return Err(Error::Usage("sending without files")),
        (TransferRole::Receiver, _) => transfer::receive(link, events, cmds, carry).await?,
    };
    match summary {
        Some(done) => events.emit(&done.into()),
        None => events.emit(&Event::Declined),
    }
    if link.role == TransferRole::Receiver {
        // The sender finishes when our last acknowledgement arrives, and closes. Closing
        // first could cut that acknowledgement off (Chromium's close aborts the SCTP
        // association): the sender would then wait for us to come back.
        link.closed_by_peer(RECEIVER_LINGER).await;
    }
    Ok(())
}

/// How long a receiver that finished leaves the connection up for the sender to close it.
const RECEIVER_LINGER: Duration = Duration::from_secs(1);

/// The page holds the room it made (a share, or a drop into an inbox): when the connection
/// dies the other side comes back into it (it joins again by itself) and the transfer
/// continues.
fn held() -> Config {
    Config {
        rejoin_wait: Some(REJOIN_DEFAULT),
        ..Config::default()
    }
}

/// Send `sources` from the room `rv` makes (proving `device` to an inbox).
async fn share_flow(
    mut rv: Rendezvous,
    (sources, device): (Vec<Source>, Option<transfer::Device>),
    events: Events,
    mut cmds: mpsc::UnboundedReceiver<Command>,
) -> Result<()> {
    let mut ws = None;
    let mut again = false;
    let mut carry = Carry::default();
    let result = loop {
        let mut link = match rendezvous::connect(rv, ws.take(), &events, &mut cmds).await {
            Ok((link, _)) => link,
            Err(e) => break Err(e),
        };
        link.again = again;
        match transfer_over(
            &mut link,
            Some((sources.clone(), device.as_ref())),
            &events,
            &mut cmds,
            &mut carry,
        )
        .await
        {
            Err(e) if e.is_link_lost() => {
                let Some((mut held, socket)) = link.take_signalling().await else {
                    break Err(e);
                };
                if !held.link_lost(js::now()) {
                    break Err(e);
                }
                (rv, ws, again) = (held, Some(socket), true);
            }
            result => break result,
        }
    };
    carry.end();
    result
}

async fn open_flow(
    server: String,
    invitation: String,
    events: Events,
    mut cmds: mpsc::UnboundedReceiver<Command>,
) -> Result<()> {
    let inv = Invitation::parse(invitation.trim())?;
    // The creator said what it does; this page takes the other side (and asks its person
    // for files when that side is sending).
    let mut rv = Rendezvous::join(&inv, &server, Want::Opposite, Config::default(), js::now());
    let mut files = None;
    let mut again = false;
    let mut carry = Carry::default();
    let result = loop {
        let (mut link, picked) = match rendezvous::connect(rv, None, &events, &mut cmds).await {
            Ok(l) => l,
            Err(e) => break Err(e),
        };
        link.again = again;
        if picked.is_some() {
            files = picked;
        }
        let (role, place) = (link.role, link.place.clone());
        let sending = files.clone().map(|f| (f, None));
        match transfer_over(&mut link, sending, &events, &mut cmds, &mut carry).await {
            // The other side (which made the room) holds it when the connection dies: this
            // page joins it again and the transfer continues from what the receiver holds —
            // a sending page still has its files, a receiving page its sinks.
            Err(e) if e.is_link_lost() => {
                let want = match role {
                    TransferRole::Sender => Want::Send,
                    TransferRole::Receiver => Want::Receive,
                };
                let (place, now) = (place.as_ref(), js::now());
                rv = Rendezvous::rejoin(&inv, place, &server, want, Config::default(), now);
                again = true;
            }
            result => break result,
        }
    };
    // A folder keeps the part of a file cut off for good; the link opened again continues it.
    carry.end();
    result
}
