//! The process's log lines: env_logger with one of three formats, chosen
//! once at start. On a terminal (or a plain pipe): env_logger's human
//! format. When stderr is the systemd journal (`JOURNAL_STREAM` names
//! stderr's device and inode), `<N>message` lines with syslog priorities
//! and no timestamp (the journal stamps them). With `log.format = "json"`,
//! one JSON object per line. Writes nothing itself but the lines.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::io::Write;

use log::Level;

use crate::config::{LogConfig, LogFormat};

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// env_logger's human format.
    Human,
    /// `<N>message`, for the journal.
    Journal,
    /// `{"ts","level","target","msg"}`.
    Json,
}

/// The syslog priority of a level: error 3, warn 4, info 6, debug and
/// trace 7.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// A journal line (without its newline).
pub fn journal_line(level: Level, msg: &str) -> String {
    format!("<{}>{msg}", priority(level))
}

/// A JSON line (without its newline).
pub fn json_line(ts: &str, level: Level, target: &str, msg: &str) -> String {
    serde_json::json!({ "ts": ts, "level": level.as_str().to_ascii_lowercase(), "target": target, "msg": msg })
        .to_string()
}

/// Whether `journal_stream` (`JOURNAL_STREAM`'s value, `DEV:INODE`) names
/// the file open as stderr.
fn stderr_is(journal_stream: &str) -> bool {
    let Some((dev, ino)) = journal_stream.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the stat it is given; it is read only on success.
    let st = unsafe {
        if libc::fstat(libc::STDERR_FILENO, st.as_mut_ptr()) != 0 {
            return false;
        }
        st.assume_init()
    };
    #[allow(clippy::useless_conversion)]
    let (d, i) = (u64::from(st.st_dev), u64::from(st.st_ino));
    d == dev && i == ino
}

/// The style for this configuration and environment: `log.format = "json"`
/// wins; else the journal when `JOURNAL_STREAM` names stderr, or when
/// `AYMC_LOG_STYLE=journal` (for tests); else human.
pub fn style(cfg: &LogConfig, env: impl Fn(&str) -> Option<String>) -> Style {
    if cfg.format == LogFormat::Json {
        return Style::Json;
    }
    if env("AYMC_LOG_STYLE").as_deref() == Some("journal") || env("JOURNAL_STREAM").is_some_and(|j| stderr_is(&j)) {
        return Style::Journal;
    }
    Style::Human
}

/// Installs the logger: the filter is `AYMC_LOG` (when not empty), else
/// `log.level`, else `info`.
pub fn init(cfg: &LogConfig) {
    let env = |k: &str| std::env::var(k).ok();
    let filter =
        env("AYMC_LOG").filter(|f| !f.is_empty()).or_else(|| cfg.level.clone()).unwrap_or_else(|| "info".into());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filter);
    match style(cfg, env) {
        Style::Human => {}
        Style::Journal => {
            builder
                .write_style(env_logger::WriteStyle::Never)
                .format(|buf, record| writeln!(buf, "{}", journal_line(record.level(), &record.args().to_string())));
        }
        Style::Json => {
            builder.write_style(env_logger::WriteStyle::Never).format(|buf, record| {
                let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                writeln!(buf, "{}", json_line(&ts, record.level(), record.target(), &record.args().to_string()))
            });
        }
    }
    builder.init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_syslog_priorities() {
        assert_eq!(journal_line(Level::Error, "x"), "<3>x");
        assert_eq!(journal_line(Level::Warn, "x"), "<4>x");
        assert_eq!(journal_line(Level::Info, "listening on 1"), "<6>listening on 1");
        assert_eq!(journal_line(Level::Debug, "x"), "<7>x");
        assert_eq!(journal_line(Level::Trace, "x"), "<7>x");
    }

    #[test]
    fn json_lines_escape_the_message() {
        let line = json_line("2026-01-01T00:00:00.000Z", Level::Warn, "aymc_hub::x", "a \"b\"\nc");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "a \"b\"\nc");
        assert_eq!(v["target"], "aymc_hub::x");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        let cfg = LogConfig::default();
        assert_eq!(style(&cfg, |k| (k == "JOURNAL_STREAM").then(|| "1:1".into())), Style::Human);
        assert_eq!(style(&cfg, |k| (k == "JOURNAL_STREAM").then(|| "garbage".into())), Style::Human);
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        assert_eq!(unsafe { libc::fstat(2, st.as_mut_ptr()) }, 0);
        let st = unsafe { st.assume_init() };
        let mine = format!("{}:{}", st.st_dev, st.st_ino);
        assert_eq!(style(&cfg, |k| (k == "JOURNAL_STREAM").then(|| mine.clone())), Style::Journal);
        let json = LogConfig { format: LogFormat::Json, level: None };
        assert_eq!(style(&json, |k| (k == "JOURNAL_STREAM").then(|| mine.clone())), Style::Json);
    }
}
