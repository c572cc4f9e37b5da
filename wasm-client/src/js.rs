//! Bridges from the browser's callbacks, promises and clock to Rust futures.
//!
//! Invariant: every closure handed to the browser is owned by a [`Listener`] and removed from
//! its target and freed when that is dropped; nothing is leaked with `Closure::forget`.

use core::time::Duration;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::EventTarget;

pub fn window() -> web_sys::Window {
    web_sys::window().expect("punchdrop runs in a page with a window")
}

/// A note for the browser's console (what a developer looking at a stuck transfer needs:
/// no names, no addresses, no secrets).
pub fn note(what: &str) {
    web_sys::console::info_1(&format!("punchdrop: {what}").into());
}

/// Monotonic time since the page loaded, for the state machines.
pub fn now() -> Duration {
    let ms = window().performance().map(|p| p.now()).unwrap_or_default();
    Duration::from_secs_f64(ms.max(0.0) / 1e3)
}

/// Resolves after `d`. Dropping it early is harmless: the timer fires into a promise nobody
/// awaits.
pub async fn sleep(d: Duration) {
    let ms = d.as_millis().min(i32::MAX as u128) as i32;
    let p = js_sys::Promise::new(&mut |resolve, _| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(p).await;
}

/// Resolves at `t` (on the [`now`] clock), never when `t` is `None`.
pub async fn sleep_until(t: Option<Duration>) {
    match t {
        Some(t) => sleep(t.saturating_sub(now())).await,
        None => std::future::pending().await,
    }
}

/// An event listener installed on a target; removed and freed on drop.
pub struct Listener {
    target: EventTarget,
    kind: &'static str,
    closure: Closure<dyn FnMut(JsValue)>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("kind", &self.kind)
            .finish()
    }
}

impl Listener {
    pub fn new<E: JsCast>(
        target: &EventTarget,
        kind: &'static str,
        mut f: impl FnMut(E) + 'static,
    ) -> Self {
        let closure = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| f(v.unchecked_into()));
        // Adding a listener to a live target cannot fail.
        let _ = target.add_event_listener_with_callback(kind, closure.as_ref().unchecked_ref());
        Self {
            target: target.clone(),
            kind,
            closure,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self
            .target
            .remove_event_listener_with_callback(self.kind, self.closure.as_ref().unchecked_ref());
    }
}

/// The message of a JS exception or rejection value.
pub fn message(v: &JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    v.as_string()
        .or_else(|| {
            js_sys::Reflect::get(v, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| format!("{v:?}"))
}

/// Read `key` of a JS object as a string.
pub fn get_str(obj: &JsValue, key: &str) -> Option<String> {
    js_sys::Reflect::get(obj, &key.into())
        .ok()
        .and_then(|v| v.as_string())
}

/// Read `key` of a JS object.
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// Await a promise, turning a rejection into its message.
pub async fn wait(p: js_sys::Promise) -> Result<JsValue, String> {
    JsFuture::from(p).await.map_err(|e| message(&e))
}

/// Convert a JSON value to a plain JS object.
pub fn to_js(v: &serde_json::Value) -> JsValue {
    js_sys::JSON::parse(&v.to_string()).unwrap_or(JsValue::NULL)
}
