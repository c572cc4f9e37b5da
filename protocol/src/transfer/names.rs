//! File names offered by a peer are hostile until proven otherwise.
//!
//! [`sanitize`] accepts only relative paths made of ordinary components, `/`-separated, and
//! refuses rather than rewrites anything doubtful, so what the receiver writes is exactly
//! what the sender named or nothing at all. Refused: empty paths and components, absolute
//! paths, drive prefixes, `.` and `..`, backslashes, control characters, invisible and
//! text-direction formatting characters (a name must read as what it is: no right-to-left
//! override turning `cod.exe` into `exe.doc`), characters Windows does not allow in names
//! (`< > : " | ? *`), Windows device names (`CON`, `NUL`, `COM1`, … with any extension),
//! trailing dots or spaces, components longer than 255 bytes, paths longer than 4096 bytes
//! or deeper than 64 levels. The sender applies the same check, so such a name is refused
//! before anything is offered.

use std::fmt;

pub const MAX_COMPONENT_BYTES: usize = 255;
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("'.' or '..' component")]
    DotComponent,
    #[error("empty path component")]
    EmptyComponent,
    #[error("backslash or control character in a name")]
    BadCharacter,
    #[error("invisible or text-direction formatting character in a name")]
    FormatCharacter,
    #[error("a character Windows does not allow in file names (< > : \" | ? *)")]
    ReservedCharacter,
    #[error("reserved device name")]
    DeviceName,
    #[error("name ends with a dot or a space")]
    TrailingDotOrSpace,
    #[error("name longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
    #[error("path longer than {MAX_PATH_BYTES} bytes or deeper than {MAX_DEPTH} levels")]
    PathTooLong,
}

/// A relative path whose every component passed [`sanitize`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafePath(String);

impl SafePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The first component: the name that appears directly in the destination folder.
    pub fn top(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_device_name(component: &str) -> bool {
    let stem = component
        .split('.')
        .next()
        .unwrap_or(component)
        .trim_end()
        .to_ascii_uppercase();
    matches!(
        stem.as_str(),
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$"
    ) || ((stem.starts_with("COM") || stem.starts_with("LPT"))
        && stem.len() == 4
        && stem.as_bytes()[3].is_ascii_digit()
        && stem.as_bytes()[3] != b'0')
}

/// Unicode format characters (general category Cf): zero-width and joining characters,
/// bidirectional marks, embeddings, overrides and isolates, the byte-order mark, tags.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// Check one path offered by a peer.
pub fn sanitize(path: &str) -> Result<SafePath, NameError> {
    if path.is_empty() {
        return Err(NameError::Empty);
    }
    if path.starts_with('/') || path.as_bytes().get(1) == Some(&b':') {
        return Err(NameError::Absolute);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(NameError::PathTooLong);
    }
    let mut depth = 0;
    for c in path.split('/') {
        depth += 1;
        if c.is_empty() {
            return Err(NameError::EmptyComponent);
        }
        if c == "." || c == ".." {
            return Err(NameError::DotComponent);
        }
        if c.chars().any(|ch| ch == '\\' || ch.is_control()) {
            return Err(NameError::BadCharacter);
        }
        if c.chars().any(is_format_char) {
            return Err(NameError::FormatCharacter);
        }
        if c.chars()
            .any(|ch| matches!(ch, '<' | '>' | ':' | '"' | '|' | '?' | '*'))
        {
            return Err(NameError::ReservedCharacter);
        }
        if c.len() > MAX_COMPONENT_BYTES {
            return Err(NameError::ComponentTooLong);
        }
        if c.ends_with('.') || c.ends_with(' ') {
            return Err(NameError::TrailingDotOrSpace);
        }
        if is_device_name(c) {
            return Err(NameError::DeviceName);
        }
    }
    if depth > MAX_DEPTH {
        return Err(NameError::PathTooLong);
    }
    Ok(SafePath(path.to_string()))
}

/// `name` with ` (n)` before its extension: `a.txt` → `a (1).txt`, `.bashrc` → `.bashrc (1)`,
/// `dir` → `dir (1)`. Used to avoid overwriting what already exists.
pub fn numbered(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass_unchanged() {
        for ok in [
            "a.txt",
            "dir/sub/file.bin",
            ".hidden",
            "naïve café.pdf",
            "a b/c d",
            "CONSOLE",
            "日本語/ファイル.txt",
            "emoji 🎉 ok.png",
        ] {
            assert_eq!(sanitize(ok).unwrap().as_str(), ok);
        }
        assert_eq!(sanitize("x/y/z").unwrap().top(), "x");
    }

    #[test]
    fn hostile_names_are_refused() {
        let cases = [
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute),
            ("C:evil", NameError::Absolute),
            ("../x", NameError::DotComponent),
            ("a/../../x", NameError::DotComponent),
            ("./x", NameError::DotComponent),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            ("..\\x", NameError::BadCharacter),
            ("a\0b", NameError::BadCharacter),
            ("new\nline", NameError::BadCharacter),
            ("NUL", NameError::DeviceName),
            ("con.txt", NameError::DeviceName),
            ("dir/COM1.log", NameError::DeviceName),
            ("lpt9", NameError::DeviceName),
            ("trailing.", NameError::TrailingDotOrSpace),
            ("trailing ", NameError::TrailingDotOrSpace),
            ("cod\u{202E}fdp.exe", NameError::FormatCharacter),
            ("zero\u{200B}width", NameError::FormatCharacter),
            ("bom\u{FEFF}", NameError::FormatCharacter),
            ("dir/iso\u{2066}late", NameError::FormatCharacter),
            ("tag\u{E0041}", NameError::FormatCharacter),
            ("ab:c", NameError::ReservedCharacter),
            ("what?.txt", NameError::ReservedCharacter),
            ("dir/\"quoted\"", NameError::ReservedCharacter),
            ("a|b", NameError::ReservedCharacter),
            ("<x>", NameError::ReservedCharacter),
            ("star*", NameError::ReservedCharacter),
        ];
        for (name, err) in cases {
            assert_eq!(sanitize(name), Err(err), "{name:?}");
        }
        assert_eq!(sanitize(&"x".repeat(256)), Err(NameError::ComponentTooLong));
        assert_eq!(sanitize(&"ab/".repeat(2000)), Err(NameError::PathTooLong));
        assert_eq!(
            sanitize("a/".repeat(70).trim_end_matches('/')),
            Err(NameError::PathTooLong)
        );
        assert!(sanitize("com0").is_ok());
    }

    #[test]
    fn numbering_keeps_the_extension() {
        assert_eq!(numbered("a.txt", 1), "a (1).txt");
        assert_eq!(numbered("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
        assert_eq!(numbered("dir", 3), "dir (3)");
    }
}
