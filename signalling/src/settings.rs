//! The server's settings from three places, for any clap command: a TOML file
//! (`--config FILE`), environment variables and flags.
//!
//! Precedence, highest first: flags, then `PUNCHDROP_*` variables, then the file, then the
//! built-in defaults. The file's keys are the long flags' names (`max-rooms = 500`;
//! `max_rooms` is read the same), so the flags' documentation is the file's. The file's values
//! become the flags' defaults ([`with_file`]): clap then applies its own precedence, and a
//! file value is checked by the flag's own parser before the server starts.
//!
//! [`render`] prints the result as a TOML file the server would read back, saying where each
//! value came from, with secrets masked.

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Arguments that are about the settings themselves, never in a file.
const NOT_IN_FILE: &[&str] = &[
    "config",
    "print-config",
    "issue-relay-token",
    "help",
    "version",
];

/// Why a settings file cannot be used. Each names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error(
        "the config file {path} has an unknown key `{key}` (keys are the long flags' names, \
         e.g. `max-rooms = 500`; see --help)"
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error("the config file {path}: key `{key}`: {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// What a file set, to tell its values from built-in defaults when printing.
#[derive(Debug, Default, Clone)]
pub struct FromFile {
    pub path: Option<PathBuf>,
    pub keys: BTreeSet<String>,
}

/// The `--config` path among `args` (`--config F` or `--config=F`), else `env_var`'s value.
pub fn config_path(args: &[std::ffi::OsString], env_var: &str) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(env_var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `cmd` with its on/off flags also taking a value (`--no-turn=false`), so a flag can turn
/// off what a file or variable turned on.
pub fn switchable(mut cmd: Command) -> Command {
    let flags: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| matches!(a.get_action(), ArgAction::SetTrue) && a.get_long().is_some())
        .map(|a| a.get_id().clone())
        .collect();
    for id in flags {
        cmd = cmd.mut_arg(id, |a| {
            a.action(ArgAction::Set)
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .default_value("false")
                .value_parser(clap::builder::BoolishValueParser::new())
        });
    }
    cmd
}

/// `cmd` with the file's values as its arguments' defaults; `secrets` (long names) are not
/// shown as defaults in `--help`.
pub fn with_file(
    mut cmd: Command,
    path: &Path,
    secrets: &[&str],
) -> Result<(Command, FromFile), SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
    let mut keys = BTreeSet::new();
    for (raw_key, value) in table {
        let key = raw_key.replace('_', "-");
        let unknown = || SettingsError::UnknownKey {
            path: path.to_owned(),
            key: raw_key.clone(),
        };
        if NOT_IN_FILE.contains(&key.as_str()) {
            return Err(unknown());
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .ok_or_else(unknown)?
            .clone();
        let bad = |message: String| SettingsError::BadValue {
            path: path.to_owned(),
            key: raw_key.clone(),
            message,
        };
        let values = strings(&value, arg.get_action()).map_err(bad)?;
        if !matches!(arg.get_action(), ArgAction::SetTrue) {
            check(&arg, &key, &values).map_err(bad)?;
        }
        let id = arg.get_id().clone();
        let secret = secrets.contains(&key.as_str());
        cmd = cmd.mut_arg(id, |a| a.default_values(values).hide_default_value(secret));
        keys.insert(key);
    }
    Ok((
        cmd,
        FromFile {
            path: Some(path.to_owned()),
            keys,
        },
    ))
}

/// Run the flag's own parser over a file's values, as if they were given as flags.
fn check(arg: &clap::Arg, long: &str, values: &[String]) -> Result<(), String> {
    let probe = clap::Arg::new(arg.get_id().clone())
        .long(long.to_owned())
        .action(ArgAction::Append)
        .value_parser(arg.get_value_parser().clone());
    let argv = values.iter().map(|v| format!("--{long}={v}"));
    Command::new("config")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(argv)
        .map(drop)
        .map_err(|e| clap_message(&e))
}

/// A TOML value as the strings a flag would be given.
fn strings(value: &toml::Value, action: &ArgAction) -> Result<Vec<String>, String> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, number or boolean, not {}",
            other.type_str()
        )),
    };
    match (value, action) {
        (toml::Value::Array(items), ArgAction::Append) => items.iter().map(one).collect(),
        (toml::Value::Array(_), _) => Err("takes one value, not a list".into()),
        (toml::Value::Boolean(_), ArgAction::SetTrue) | (_, ArgAction::Set | ArgAction::Append) => {
            Ok(vec![one(value)?])
        }
        (_, ArgAction::SetTrue) => Err("expected true or false".into()),
        _ => Err("cannot be set in a file".into()),
    }
}

/// clap's message without its "error: " prefix and usage lines.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").trim().to_owned()
}

/// The settings in effect as a TOML file, each line saying where its value came from;
/// `secrets` (long names) are only said to be set, in a comment.
pub fn render(cmd: &Command, matches: &ArgMatches, file: &FromFile, secrets: &[&str]) -> String {
    let mut out = String::new();
    if let Some(path) = &file.path {
        out.push_str(&format!("# config file: {}\n", path.display()));
    }
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "environment ({})",
                arg.get_env()
                    .map(|e| e.to_string_lossy())
                    .unwrap_or_default()
            ),
            Some(ValueSource::DefaultValue) if file.keys.contains(long) => "config file".into(),
            Some(_) => "default".into(),
            None => {
                out.push_str(&format!("# {long} = (unset)\n"));
                continue;
            }
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if secrets.contains(&long) {
            // Commented out: read back, a placeholder would become the secret.
            out.push_str(&format!("# {long} = (set, not shown)  # {source}\n"));
            continue;
        }
        let value = if matches!(arg.get_action(), ArgAction::Append) {
            toml::Value::Array(raw.iter().map(|v| scalar(v)).collect())
        } else {
            scalar(raw.first().map_or("", String::as_str))
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    out
}

/// A flag's value as the TOML scalar that reads back the same.
fn scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t")
            .arg(
                Arg::new("max_rooms")
                    .long("max-rooms")
                    .env("T_MAX_ROOMS")
                    .value_parser(clap::value_parser!(u32))
                    .default_value("10"),
            )
            .arg(Arg::new("stun").long("stun").action(ArgAction::Append))
            .arg(
                Arg::new("no_turn")
                    .long("no-turn")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("secret").long("secret"))
            .arg(Arg::new("config").long("config"))
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let (_d, path) =
            file("max_rooms = 20\nstun = [\"stun:a:1\", \"stun:b:2\"]\nno-turn = true\n");
        let (c, from) = with_file(switchable(cmd()), &path, &[]).unwrap();
        let m = c.clone().try_get_matches_from(["t"]).unwrap();
        assert_eq!(m.get_one::<u32>("max_rooms"), Some(&20));
        assert_eq!(m.get_many::<String>("stun").unwrap().count(), 2);
        assert_eq!(m.get_one::<bool>("no_turn"), Some(&true));
        // A flag turns off what the file turned on.
        let m = c
            .clone()
            .try_get_matches_from(["t", "--no-turn=false"])
            .unwrap();
        assert_eq!(m.get_one::<bool>("no_turn"), Some(&false));
        let m = switchable(cmd())
            .try_get_matches_from(["t", "--no-turn"])
            .unwrap();
        assert_eq!(m.get_one::<bool>("no_turn"), Some(&true));
        let m = c
            .clone()
            .try_get_matches_from(["t", "--max-rooms", "30"])
            .unwrap();
        assert_eq!(m.get_one::<u32>("max_rooms"), Some(&30));
        let printed = render(&c, &m, &from, &["secret"]);
        assert!(printed.contains("max-rooms = 30  # flag"), "{printed}");
        assert!(
            printed.contains("stun = [\"stun:a:1\", \"stun:b:2\"]  # config file"),
            "{printed}"
        );
        assert!(printed.contains("# secret = (unset)"), "{printed}");
    }

    #[test]
    fn bad_files_name_the_key() {
        for (text, key, want) in [
            ("max-rooms = \"many\"", "max-rooms", "invalid value"),
            ("max-rooms = [1, 2]", "max-rooms", "one value"),
            ("no-turn = 3", "no-turn", "invalid value"),
            ("max-rooms = { a = 1 }", "max-rooms", "not table"),
        ] {
            let (_d, path) = file(text);
            let e = with_file(switchable(cmd()), &path, &[]).unwrap_err();
            let s = e.to_string();
            assert!(
                matches!(&e, SettingsError::BadValue { key: k, .. } if k == key),
                "{text}: {s}"
            );
            assert!(s.contains(want), "{text}: {s}");
        }
        let (_d, path) = file("max-room = 3");
        let e = with_file(cmd(), &path, &[]).unwrap_err();
        assert!(e.to_string().contains("unknown key `max-room`"), "{e}");
        let (_d, path) = file("config = \"x\"");
        assert!(matches!(
            with_file(cmd(), &path, &[]),
            Err(SettingsError::UnknownKey { .. })
        ));
        let (_d, path) = file("max-rooms = ");
        assert!(matches!(
            with_file(cmd(), &path, &[]),
            Err(SettingsError::Syntax { .. })
        ));
    }

    #[test]
    fn secrets_are_masked() {
        let (_d, path) = file("secret = \"hunter2\"");
        let (mut c, from) = with_file(cmd(), &path, &["secret"]).unwrap();
        let m = c.clone().try_get_matches_from(["t"]).unwrap();
        let printed = render(&c, &m, &from, &["secret"]);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("# secret = (set, not shown)  # config file"),
            "{printed}"
        );
        let help = c.render_long_help().to_string();
        assert!(!help.contains("hunter2"), "{help}");
    }

    #[test]
    fn the_path_comes_from_the_flag_or_the_environment() {
        let args: Vec<std::ffi::OsString> = ["s", "--config=/a.toml"].map(Into::into).to_vec();
        assert_eq!(config_path(&args, "T_NOPE"), Some(PathBuf::from("/a.toml")));
        let args: Vec<std::ffi::OsString> = ["s", "--config", "/b.toml"].map(Into::into).to_vec();
        assert_eq!(config_path(&args, "T_NOPE"), Some(PathBuf::from("/b.toml")));
        let args: Vec<std::ffi::OsString> = ["s"].map(Into::into).to_vec();
        assert_eq!(config_path(&args, "T_NOPE_UNSET_VAR"), None);
    }
}
