//! Events for the page: [`protocol::event::Event`], the same vocabulary as native-peer's
//! `--json` lines, handed to the page's callback as plain objects.

use core::time::Duration;
use protocol::event::Event;
use std::cell::Cell;

use crate::js;

/// The page's event callback.
#[derive(Debug, Clone)]
pub struct Events {
    callback: js_sys::Function,
    both_in_room: std::rc::Rc<Cell<Duration>>,
}

impl Events {
    pub fn new(callback: js_sys::Function) -> Self {
        Self {
            callback,
            both_in_room: Default::default(),
        }
    }

    pub fn emit(&self, event: &Event) {
        let value = serde_json::to_value(event).expect("events serialise");
        // A throwing callback is the page's bug; the transfer goes on.
        let _ = self
            .callback
            .call1(&wasm_bindgen::JsValue::NULL, &js::to_js(&value));
    }

    /// Remember when both peers were in the room (for `first_byte` timing).
    pub fn set_both_in_room(&self, t: Duration) {
        self.both_in_room.set(t);
    }

    pub fn both_in_room(&self) -> Duration {
        self.both_in_room.get()
    }
}
