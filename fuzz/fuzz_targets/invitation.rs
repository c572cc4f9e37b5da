//! What a person pastes or types to join: links, codes, server URLs. Never panics; a link or
//! code that parses prints as text that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::invite::{
    Invitation, SECRET_BYTES, ShareLink, ShortCode, valid_room_id, websocket_url,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let _ = valid_room_id(text);
    let _ = websocket_url(text);
    match Invitation::parse(text) {
        Ok(Invitation::Link(l)) => assert_eq!(ShareLink::parse(text), Ok(l)),
        Ok(Invitation::Code(c)) => assert_eq!(ShortCode::parse(text), Ok(c)),
        Err(_) => {}
    }
    if let Ok(link) = ShareLink::parse(text) {
        assert!(valid_room_id(&link.room), "{link:?}");
        assert!(link.password().len() >= SECRET_BYTES, "{link:?}");
        let shown = link.to_string();
        assert_eq!(ShareLink::parse(&shown).as_ref(), Ok(&link), "{shown}");
        let _ = websocket_url(&link.server);
    }
    if let Ok(code) = ShortCode::parse(text) {
        let shown = code.to_string();
        assert_eq!(ShortCode::parse(&shown).as_ref(), Ok(&code), "{shown}");
        assert_eq!(code.password(), shown.into_bytes());
    }
});
