//! Plain HTTP pages: the landing page, share-link pages and `/metrics`.
//!
//! The browser app arrives with the WASM client; until then a share link opened in a browser
//! explains how to receive with the command-line peer.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use std::sync::Arc;

use crate::AppState;

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = state.metrics.render(state.rooms.active());
        if let Some(t) = &state.turn_metrics {
            text.push_str(&t.render());
        }
        text
    })
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>punchdrop</title>
<style>
body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}
code{background:#f3f3f3;padding:.15rem .35rem;border-radius:4px;word-break:break-all}
h1{font-weight:600}
</style></head><body>
<h1>punchdrop</h1>
BODY
</body></html>"#;

pub(crate) async fn index() -> Html<String> {
    Html(PAGE.replace(
        "BODY",
        "<p>Peer-to-peer file transfer. Send with <code>native-peer send FILE…</code> and \
         share the link or code it prints; receive with <code>native-peer recv LINK|CODE</code>.</p>",
    ))
}

pub(crate) async fn share_page(Path(room): Path<String>) -> Html<String> {
    let body = if protocol::invite::valid_room_id(&room) {
        "<p>Someone shared files with you. To receive them, run</p>\
         <p><code>native-peer recv '<span id=l></span>'</code></p>\
         <script>document.getElementById('l').textContent=location.href</script>"
    } else {
        "<p>This link is not valid.</p>"
    };
    Html(PAGE.replace("BODY", body))
}
