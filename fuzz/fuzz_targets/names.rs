//! File names a sender offers: `protocol::transfer::names::sanitize`. Never panics, and what it
//! accepts keeps the promises of its module docs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::names::{MAX_COMPONENT_BYTES, MAX_DEPTH, MAX_PATH_BYTES, numbered, sanitize};

/// The Windows device names the docs list ("CON, NUL, COM1, … with any extension").
fn is_device(component: &str) -> bool {
    let stem = component.split('.').next().unwrap_or(component);
    let stem = stem.trim_end().to_ascii_uppercase();
    let numbered = |p: &str| {
        stem.len() == 4 && stem.starts_with(p) && matches!(stem.as_bytes()[3], b'1'..=b'9')
    };
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL") || numbered("COM") || numbered("LPT")
}

/// Text-direction and invisible characters the docs name (overrides, isolates, zero-width,
/// byte-order mark).
fn is_direction_or_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let _ = numbered(path, u32::from(data.first().copied().unwrap_or(0)));
    let Ok(safe) = sanitize(path) else {
        return;
    };
    // Refused rather than rewritten: what is written is exactly what the sender named.
    assert_eq!(safe.as_str(), path);
    assert!(!path.is_empty());
    assert!(!path.starts_with('/'), "absolute: {path:?}");
    assert_ne!(
        path.as_bytes().get(1),
        Some(&b':'),
        "drive prefix: {path:?}"
    );
    assert!(path.len() <= MAX_PATH_BYTES);
    let components: Vec<&str> = safe.components().collect();
    assert_eq!(components, path.split('/').collect::<Vec<_>>());
    assert!(components.len() <= MAX_DEPTH, "too deep: {path:?}");
    assert_eq!(safe.top(), components[0]);
    for c in &components {
        assert!(!c.is_empty(), "empty component: {path:?}");
        assert!(*c != "." && *c != "..", "dot component: {path:?}");
        assert!(c.len() <= MAX_COMPONENT_BYTES);
        for ch in c.chars() {
            assert!(ch != '\\' && !ch.is_control(), "bad character: {path:?}");
            assert!(!is_direction_or_invisible(ch), "format character: {path:?}");
            assert!(!"<>:\"|?*".contains(ch), "reserved character: {path:?}");
        }
        assert!(
            !c.ends_with('.') && !c.ends_with(' '),
            "trailing dot or space: {path:?}"
        );
        assert!(!is_device(c), "device name: {path:?}");
    }
    // Idempotent.
    assert_eq!(sanitize(safe.as_str()), Ok(safe.clone()));
});
