//! Peer → server WebSocket text: what the signalling server parses from anyone who connects.
//! Never panics; whatever parses serialises back to text that parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::signal::ClientMessage;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(msg) = serde_json::from_str::<ClientMessage>(&text) {
        let json = msg.to_json();
        let back: ClientMessage = serde_json::from_str(&json).expect("to_json output parses");
        assert_eq!(back, msg, "{json}");
    }
});
