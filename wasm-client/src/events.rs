//! Events for the page, shaped like the native peer's `--json` events so tests and tools read
//! both the same way: `ready`, `joined`, `pick`, `connected`, `offer`, `accepted`,
//! `first_byte`, `progress`, `file_done`, `done`, `error`.

use core::time::Duration;
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

    pub fn emit(&self, event: serde_json::Value) {
        // A throwing callback is the page's bug; the transfer goes on.
        let _ = self
            .callback
            .call1(&wasm_bindgen::JsValue::NULL, &js::to_js(&event));
    }

    /// Remember when both peers were in the room (for `first_byte` timing).
    pub fn set_both_in_room(&self, t: Duration) {
        self.both_in_room.set(t);
    }

    pub fn both_in_room(&self) -> Duration {
        self.both_in_room.get()
    }
}
