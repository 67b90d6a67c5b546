//! aymc-cli: the command-line and configuration-file conventions the
//! `aymc-hub` and `aymc-agent` binaries share, so that both read their flags
//! and TOML files the same way and report a problem the same way: one
//! [`ConfigError`] line on stderr and exit code 2. Each binary keeps its own
//! flags, keys and validation; this crate touches no socket.
#![deny(missing_docs)]

use std::path::Path;

/// A configuration or command-line error: one line for stderr, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads and parses a TOML file; a problem is one line naming the file
/// and, for a syntax or type error, the line in it.
///
/// # Errors
/// An unreadable file, TOML syntax, an unknown key, a wrong type.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        let line = e.span().map(|s| text.get(..s.start).map_or(0, |t| t.matches('\n').count()) + 1);
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        ConfigError(format!("{}{at}: {msg}", path.display()))
    })
}

/// Splits one command-line argument: `--flag=value` gives the flag and its
/// inline value; anything else is the flag alone.
pub fn split_flag(arg: &str) -> (String, Option<String>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
        _ => (arg.to_string(), None),
    }
}

/// The value of `flag`: its inline value, else the next argument.
///
/// # Errors
/// When there is neither.
pub fn flag_value(
    flag: &str,
    inline: &Option<String>,
    rest: &mut impl Iterator<Item = String>,
) -> Result<String, ConfigError> {
    inline.clone().or_else(|| rest.next()).ok_or_else(|| ConfigError(format!("{flag} needs a value")))
}
