//! Minecraft log lines into entries, with no IO: the line prefixes of
//! vanilla, Paper/Spigot, Forge and Fabric ([`parse_header`]), which lines
//! continue the previous entry ([`is_continuation`]), folding them into
//! entries ([`Folder`]), dating `HH:MM:SS` stamps ([`stamp`]), and the few
//! messages that mean something to the agent ([`tps`], [`marker`]).
//!
//! The rules are DESIGN.md's "The agent contract": after the prefix, a leading
//! `[Name] ` names a plugin; Forge's `[mod/logger]` names a mod; a line that
//! parses as nothing is still an entry (`INFO`, `server`, the whole line).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

/// A log level as the hub knows it (PROTOCOL.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `INFO`, and any level the agent does not know.
    Info,
    /// `WARN` (`WARNING`).
    Warn,
    /// `ERROR` (`FATAL`, `SEVERE`).
    Error,
    /// `DEBUG` (`TRACE`).
    Debug,
}

impl LogLevel {
    /// Maps a logger's level name; unknown names are `INFO`.
    pub fn from_name(name: &str) -> LogLevel {
        match name.trim() {
            "WARN" | "WARNING" => LogLevel::Warn,
            "ERROR" | "FATAL" | "SEVERE" => LogLevel::Error,
            "DEBUG" | "TRACE" | "FINE" | "FINER" | "FINEST" => LogLevel::Debug,
            _ => LogLevel::Info,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
            LogLevel::Debug => "DEBUG",
        }
    }
}

/// When a line says it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTime {
    /// `[HH:MM:SS]` (optionally `.mmm`): the date is the reader's.
    Clock(NaiveTime),
    /// `[28Nov2026 15:30:00.123]`: Forge's and Fabric's dated prefix.
    Full(NaiveDateTime),
}

/// What a line's prefix says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// The time in the prefix.
    pub time: LineTime,
    /// The level in the prefix.
    pub level: LogLevel,
    /// The plugin or mod, when the line names one (`None`: `server`).
    pub source: Option<&'a str>,
    /// The rest of the line.
    pub message: &'a str,
}

/// Parses a line's prefix: `[HH:MM:SS] [thread/LEVEL]: msg`,
/// `[HH:MM:SS LEVEL]: msg`, `[HH:MM:SS] [thread/LEVEL] [mod/logger]: msg`, and
/// the same with `[28Nov2026 15:30:00.123]` as the time. `None` when the line
/// has none of these prefixes.
pub fn parse_header(line: &str) -> Option<Header<'_>> {
    let rest = line.strip_prefix('[')?;
    let (time, rest) = parse_time(rest)?;
    let (level, mut source, message) = if let Some(rest) = rest.strip_prefix(' ') {
        // Spigot/Paper console: `[HH:MM:SS LEVEL]: msg`.
        let (level, rest) = rest.split_once(']')?;
        if level.is_empty() || !level.bytes().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        (LogLevel::from_name(level), None, after_colon(rest)?)
    } else {
        let rest = rest.strip_prefix("] [")?;
        let (thread, rest) = rest.split_once(']')?;
        let level = thread.rsplit_once('/').map_or(thread, |(_, level)| level);
        match rest.strip_prefix(" [") {
            Some(rest) => {
                // Forge: `[thread/LEVEL] [mod/logger]: msg`.
                let (module, rest) = rest.split_once(']')?;
                let name = module.split_once('/').map_or(module, |(name, _)| name);
                (LogLevel::from_name(level), Some(name).filter(|n| !n.is_empty()), after_colon(rest)?)
            }
            None => (LogLevel::from_name(level), None, after_colon(rest)?),
        }
    };
    let mut message = message;
    if source.is_none() {
        if let Some((name, rest)) = plugin_tag(message) {
            source = Some(name);
            message = rest;
        }
    }
    Some(Header { time, level, source, message })
}

/// `: msg` or a bare `:` at the end of the line.
fn after_colon(rest: &str) -> Option<&str> {
    let rest = rest.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// A leading `[Name] ` where Name is a plugin-like identifier, not `Server`.
fn plugin_tag(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix('[')?;
    let (name, rest) = rest.split_once("] ")?;
    let plugin_like =
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    (plugin_like && name != "Server").then_some((name, rest))
}

/// `HH:MM:SS(.mmm)` or `ddMMMyyyy HH:MM:SS(.mmm)`, returning what follows it.
fn parse_time(s: &str) -> Option<(LineTime, &str)> {
    if s.as_bytes().get(2) == Some(&b':') {
        let (time, rest) = parse_clock(s)?;
        return Some((LineTime::Clock(time), rest));
    }
    let day_len = s.bytes().take_while(u8::is_ascii_digit).count();
    if !(1..=2).contains(&day_len) {
        return None;
    }
    let day: u32 = s.get(..day_len)?.parse().ok()?;
    let month = month_number(s.get(day_len..day_len + 3)?)?;
    let year_text = s.get(day_len + 3..day_len + 7)?;
    if !year_text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year_text.parse().ok()?, month, day)?;
    let (time, rest) = parse_clock(s.get(day_len + 7..)?.strip_prefix(' ')?)?;
    Some((LineTime::Full(date.and_time(time)), rest))
}

fn parse_clock(s: &str) -> Option<(NaiveTime, &str)> {
    let b = s.as_bytes();
    if b.len() < 8 || b.get(2) != Some(&b':') || b.get(5) != Some(&b':') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (h, m, sec) = (num(0..2)?, num(3..5)?, num(6..8)?);
    let mut rest = &s[8..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let digits = &frac[..n.min(3)];
        ms = digits.parse::<u32>().ok()? * 10u32.pow(3 - digits.len() as u32);
        rest = &frac[n..];
    }
    Some((NaiveTime::from_hms_milli_opt(h, m, sec, ms)?, rest))
}

fn month_number(abbrev: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    MONTHS.iter().position(|m| m.eq_ignore_ascii_case(abbrev)).map(|i| i as u32 + 1)
}

/// Whether a line continues the entry before it (DESIGN.md): whitespace +
/// `at `, `Caused by:`, `Suppressed:`, `... N more`, or a line without a
/// time prefix that names a Java `Exception`/`Error` class.
pub fn is_continuation(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.len() != line.len() && trimmed.starts_with("at ") {
        return true;
    }
    if trimmed.starts_with("Caused by:") || trimmed.starts_with("Suppressed:") {
        return true;
    }
    if let Some(n) = trimmed.strip_prefix("... ").and_then(|t| t.trim_end().strip_suffix(" more")) {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return true;
        }
    }
    parse_header(line).is_none() && line.split_whitespace().any(names_throwable)
}

/// `java.lang.IllegalStateException:` and the like: a qualified class name
/// whose last part ends in `Exception` or `Error`.
fn names_throwable(token: &str) -> bool {
    let token = token.trim_end_matches([':', ',', ';', ')']);
    let Some((package, class)) = token.rsplit_once('.') else { return false };
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    package.split('.').all(ident)
        && ident(class)
        && class.starts_with(|c: char| c.is_ascii_uppercase())
        && (class.ends_with("Exception") || class.ends_with("Error"))
}

/// One log entry: its first line's offset, and the lines folded into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `(generation << 40) + byte position of the first line` (DESIGN.md).
    pub offset: u64,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// The level.
    pub level: LogLevel,
    /// `server`, or the plugin or mod.
    pub source: String,
    /// The first line without its prefix.
    pub message: String,
    /// The folded continuation lines, joined with `\n`; empty when none.
    pub exception: String,
}

/// The source of lines that name no plugin or mod.
pub const SERVER_SOURCE: &str = "server";

/// The most bytes of folded lines one entry carries. A longer trace goes on
/// in a new entry (same level and source, empty message), so no entry grows
/// past gRPC's 4 MiB message limit and no line is dropped.
pub const MAX_EXCEPTION: usize = 256 * 1024;

/// Gives an `HH:MM:SS` stamp the reader's local date, so that a line is never
/// more than an hour in the future of `now` (a line from 23:59:59 read just
/// after midnight belongs to yesterday). Unix milliseconds.
pub fn stamp<Tz: TimeZone>(time: LineTime, now: &DateTime<Tz>) -> i64 {
    let tz = now.timezone();
    let local = |naive: NaiveDateTime| tz.from_local_datetime(&naive).earliest().map(|t| t.timestamp_millis());
    let now_ms = now.timestamp_millis();
    match time {
        LineTime::Full(naive) => local(naive).unwrap_or(now_ms),
        LineTime::Clock(clock) => {
            let today = now.naive_local().date().and_time(clock);
            match local(today) {
                Some(ms) if ms > now_ms + 3_600_000 => local(today - Duration::days(1)).unwrap_or(now_ms),
                Some(ms) => ms,
                None => now_ms,
            }
        }
    }
}

/// Builds entries from lines: a line that is not a continuation starts a new
/// entry and completes the one before. The tailer also calls [`Folder::flush`]
/// 100 ms after the last line (DESIGN.md), so an entry is not held back while
/// the log is quiet.
#[derive(Debug, Default)]
pub struct Folder {
    pending: Option<Entry>,
    /// Level and source of the newest entry, for continuation lines that
    /// arrive after it was flushed.
    last: Option<(LogLevel, String)>,
}

impl Folder {
    /// Takes one complete line (without its `\n`) starting at `offset`;
    /// returns the entry it completes, if any.
    pub fn push<Tz: TimeZone>(&mut self, offset: u64, line: &str, now: &DateTime<Tz>) -> Option<Entry> {
        if is_continuation(line) {
            match (&mut self.pending, &self.last) {
                (Some(pending), _) if pending.exception.len() + line.len() >= MAX_EXCEPTION => {
                    let (level, source) = (pending.level, pending.source.clone());
                    return self.pending.replace(Entry {
                        offset,
                        timestamp: now.timestamp_millis(),
                        level,
                        source,
                        message: String::new(),
                        exception: line.to_string(),
                    });
                }
                (Some(pending), _) => {
                    if !pending.exception.is_empty() {
                        pending.exception.push('\n');
                    }
                    pending.exception.push_str(line);
                    return None;
                }
                // A continuation after its entry was flushed: its own entry,
                // with the level and source of the one it continues.
                (None, Some((level, source))) => {
                    self.pending = Some(Entry {
                        offset,
                        timestamp: now.timestamp_millis(),
                        level: *level,
                        source: source.clone(),
                        message: String::new(),
                        exception: line.to_string(),
                    });
                    return None;
                }
                (None, None) => {}
            }
        }
        let entry = match parse_header(line) {
            Some(h) => Entry {
                offset,
                timestamp: stamp(h.time, now),
                level: h.level,
                source: h.source.unwrap_or(SERVER_SOURCE).to_string(),
                message: h.message.to_string(),
                exception: String::new(),
            },
            None => Entry {
                offset,
                timestamp: now.timestamp_millis(),
                level: LogLevel::Info,
                source: SERVER_SOURCE.to_string(),
                message: line.to_string(),
                exception: String::new(),
            },
        };
        self.last = Some((entry.level, entry.source.clone()));
        self.pending.replace(entry)
    }

    /// Completes the entry waiting for continuation lines, if any.
    pub fn flush(&mut self) -> Option<Entry> {
        self.pending.take()
    }

    /// Whether an entry waits for continuation lines.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The offset of the entry waiting for continuation lines.
    pub fn pending_offset(&self) -> Option<u64> {
        self.pending.as_ref().map(|e| e.offset)
    }

    /// Forgets everything: a new file begins.
    pub fn reset(&mut self) {
        *self = Folder::default();
    }
}

/// TPS from Paper's `TPS from last 1m, 5m, 15m: 20.0, 19.98, 19.95` (colour
/// codes and `*` stripped): the 1-minute value.
pub fn tps(message: &str) -> Option<f64> {
    const KEY: &str = "TPS from last 1m, 5m, 15m:";
    if !message.contains("TPS from last") {
        return None;
    }
    let mut plain = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '§' => {
                chars.next();
            }
            '*' => {}
            c => plain.push(c),
        }
    }
    let (_, values) = plain.split_once(KEY)?;
    values.split(',').next()?.trim().parse().ok().filter(|v: &f64| v.is_finite())
}

/// A message that moves a server's status (DESIGN.md "Status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// `Starting minecraft server ...`
    Starting,
    /// `Done (12.3s)! For help, type "help"`
    Done,
    /// `Stopping server` / `Stopping the server`
    Stopping,
    /// `... All dimensions are saved`: the last line of a clean stop.
    AllSaved,
}

/// The status marker a message carries, if any. Only the server's own lines
/// count (`server`, or Forge's `minecraft`/`net.minecraft...`), so chat and
/// plugins cannot move the status.
pub fn marker(source: &str, message: &str) -> Option<Marker> {
    if source != SERVER_SOURCE && source != "minecraft" && !source.starts_with("net.minecraft") {
        return None;
    }
    if message.starts_with("Starting minecraft server") {
        Some(Marker::Starting)
    } else if message.starts_with("Done (") {
        Some(Marker::Done)
    } else if message.starts_with("Stopping server") || message.starts_with("Stopping the server") {
        Some(Marker::Stopping)
    } else if message.contains("All dimensions are saved") {
        Some(Marker::AllSaved)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Timelike};

    fn h(line: &str) -> Header<'_> {
        parse_header(line).unwrap_or_else(|| panic!("no header in {line:?}"))
    }

    fn clock(h: u32, m: u32, s: u32) -> LineTime {
        LineTime::Clock(NaiveTime::from_hms_opt(h, m, s).unwrap())
    }

    #[test]
    fn vanilla_line() {
        let x = h("[15:30:00] [Server thread/INFO]: Starting minecraft server version 1.21.1");
        assert_eq!(x.time, clock(15, 30, 0));
        assert_eq!((x.level, x.source, x.message), (LogLevel::Info, None, "Starting minecraft server version 1.21.1"));
        let x = h("[15:30:02] [Server thread/WARN]: Can't keep up! Is the server overloaded? Running 2041ms or 40 ticks behind");
        assert_eq!(x.level, LogLevel::Warn);
        assert!(x.message.starts_with("Can't keep up!"));
    }

    #[test]
    fn thread_names_with_spaces_and_slashes() {
        let x = h("[15:30:00] [User Authenticator #1/INFO]: UUID of player Steve is 069a79f4");
        assert_eq!((x.level, x.message), (LogLevel::Info, "UUID of player Steve is 069a79f4"));
        let x = h("[15:30:00] [Netty Epoll/Server IO #1/ERROR]: boom");
        assert_eq!(x.level, LogLevel::Error);
    }

    #[test]
    fn spigot_line_with_plugin() {
        let x = h("[15:30:00 INFO]: [Essentials] Loaded 38192 items from items.json.");
        assert_eq!(
            (x.level, x.source, x.message),
            (LogLevel::Info, Some("Essentials"), "Loaded 38192 items from items.json.")
        );
        let x = h("[15:30:00 WARN]: Can't keep up!");
        assert_eq!((x.level, x.source), (LogLevel::Warn, None));
    }

    #[test]
    fn plugin_tag_rules() {
        assert_eq!(h("[15:30:00] [Server thread/INFO]: [LuckPerms] Loading").source, Some("LuckPerms"));
        assert_eq!(h("[15:30:00] [Server thread/INFO]: [my-plugin_2.x] hi").source, Some("my-plugin_2.x"));
        // `/say` and chat stay `server`.
        let x = h("[15:30:00] [Server thread/INFO]: [Server] hello everyone");
        assert_eq!((x.source, x.message), (None, "[Server] hello everyone"));
        let x = h("[15:30:00] [Async Chat Thread - #0/INFO]: [Not Secure] <Steve> hi");
        assert_eq!((x.source, x.message), (None, "[Not Secure] <Steve> hi"));
        assert_eq!(h("[15:30:00] [Server thread/INFO]: <Steve> [Essentials] is cool").source, None);
        assert_eq!(h("[15:30:00] [Server thread/INFO]: [Steve: Set the time to 1000]").source, None);
        assert_eq!(h("[15:30:00] [Server thread/INFO]: [NoSpaceAfter]x").source, None);
    }

    #[test]
    fn forge_line_names_the_mod() {
        let x =
            h("[15:30:00] [Server thread/INFO] [minecraft/DedicatedServer]: Done (9.012s)! For help, type \"help\"");
        assert_eq!((x.source, x.message), (Some("minecraft"), "Done (9.012s)! For help, type \"help\""));
        let x = h("[15:30:00] [modloading-worker-0/DEBUG] [ne.mi.ve.fo.ForgeVersion/CORE]: Found status");
        assert_eq!((x.level, x.source), (LogLevel::Debug, Some("ne.mi.ve.fo.ForgeVersion")));
        // The mod's own tag wins; a `[Name] ` in the message stays in it.
        let x = h("[15:30:00] [Server thread/INFO] [jei/]: [JEI] Starting");
        assert_eq!((x.source, x.message), (Some("jei"), "[JEI] Starting"));
        assert_eq!(h("[15:30:00] [main/INFO] [/]: x").source, None);
    }

    #[test]
    fn dated_forge_and_fabric_prefix() {
        let x =
            h("[28Nov2026 15:30:00.123] [main/INFO] [cpw.mods.modlauncher.Launcher/MODLAUNCHER]: ModLauncher running");
        let want = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap().and_hms_milli_opt(15, 30, 0, 123).unwrap();
        assert_eq!(x.time, LineTime::Full(want));
        assert_eq!((x.source, x.message), (Some("cpw.mods.modlauncher.Launcher"), "ModLauncher running"));
        let x = h("[3Feb2027 01:02:03.4] [main/WARN] [mixin/]: Reference map not found");
        let want = NaiveDate::from_ymd_opt(2027, 2, 3).unwrap().and_hms_milli_opt(1, 2, 3, 400).unwrap();
        assert_eq!((x.time, x.level, x.source), (LineTime::Full(want), LogLevel::Warn, Some("mixin")));
    }

    #[test]
    fn levels_map_to_the_four_the_hub_knows() {
        for (name, level) in [
            ("FATAL", LogLevel::Error),
            ("TRACE", LogLevel::Debug),
            ("WARN", LogLevel::Warn),
            ("ERROR", LogLevel::Error),
            ("DEBUG", LogLevel::Debug),
            ("INFO", LogLevel::Info),
            ("NOTICE", LogLevel::Info),
        ] {
            assert_eq!(h(&format!("[01:02:03] [main/{name}]: x")).level, level, "{name}");
        }
    }

    #[test]
    fn not_headers() {
        for line in [
            "",
            "hello",
            "[15:30] [Server thread/INFO]: x",
            "[15:30:00] Server thread/INFO: x",
            "[15:30:00] [Server thread/INFO] x",
            "[ab:cd:ef] [Server thread/INFO]: x",
            "[15:30:00 info]: x",
            "[28Foo2026 15:30:00] [main/INFO]: x",
            "[15:30:00.] [main/INFO]: x",
            "[99:30:00] [main/INFO]: x",
        ] {
            assert!(parse_header(line).is_none(), "{line:?}");
        }
        assert_eq!(h("[15:30:00] [Server thread/INFO]:").message, "");
    }

    #[test]
    fn continuation_lines() {
        for line in [
            "\tat net.minecraft.server.MinecraftServer.a(MinecraftServer.java:1014) ~[server.jar:?]",
            "    at java.base/java.lang.Thread.run(Thread.java:1583)",
            "Caused by: java.lang.NullPointerException: Cannot invoke \"Object.toString()\"",
            "\tSuppressed: java.io.IOException: closed",
            "\t... 12 more",
            "net.minecraft.ReportedException: Ticking entity",
            "java.lang.OutOfMemoryError: Java heap space",
            "Exception in thread \"main\" java.lang.IllegalStateException: nope",
            "com.example.Outer$InnerException",
        ] {
            assert!(is_continuation(line), "{line:?}");
        }
        for line in [
            "[15:30:00] [Server thread/ERROR]: java.lang.RuntimeException: in a header line",
            "at the start without indent",
            "Loaded com.example.ErrorHandler",
            "Exception without a class",
            "\t... many more",
            ">",
        ] {
            assert!(!is_continuation(line), "{line:?}");
        }
    }

    fn utc_noon() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-28T12:00:00+01:00").unwrap()
    }

    #[test]
    fn stamp_uses_the_local_date_and_rolls_back_over_midnight() {
        let now = utc_noon();
        let ms = stamp(clock(11, 59, 30), &now);
        assert_eq!(ms, now.timestamp_millis() - 30_000);
        // Within the hour ahead: clock skew, same day.
        assert_eq!(stamp(clock(12, 30, 0), &now), now.timestamp_millis() + 30 * 60_000);
        // 23:59:59 read at 00:00:01 is yesterday's.
        let just_after_midnight = DateTime::parse_from_rfc3339("2026-11-29T00:00:01+01:00").unwrap();
        assert_eq!(stamp(clock(23, 59, 59), &just_after_midnight), just_after_midnight.timestamp_millis() - 2000);
        let full = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap().and_hms_milli_opt(15, 30, 0, 123).unwrap();
        let got = stamp(LineTime::Full(full), &now);
        assert_eq!(got, DateTime::parse_from_rfc3339("2026-11-28T15:30:00.123+01:00").unwrap().timestamp_millis());
    }

    #[test]
    fn folder_folds_a_stack_trace_and_keeps_offsets() {
        let now = utc_noon();
        let lines = [
            "[15:31:02] [Server thread/ERROR]: Encountered an unexpected exception",
            "net.minecraft.ReportedException: Ticking entity",
            "\tat net.minecraft.server.MinecraftServer.b(MinecraftServer.java:1014) ~[server.jar:?]",
            "Caused by: java.lang.NullPointerException: boom",
            "\t... 5 more",
            "[15:31:03] [Server thread/INFO]: Stopping server",
        ];
        let mut folder = Folder::default();
        let mut out = Vec::new();
        let mut pos = 0u64;
        for line in lines {
            out.extend(folder.push((1 << 40) + pos, line, &now));
            pos += line.len() as u64 + 1;
        }
        assert!(folder.has_pending());
        out.extend(folder.flush());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].offset, 1 << 40);
        assert_eq!(out[0].level, LogLevel::Error);
        assert_eq!(out[0].message, "Encountered an unexpected exception");
        assert_eq!(out[0].exception, lines[1..5].join("\n"));
        assert_eq!(out[1].offset, (1 << 40) + lines[..5].iter().map(|l| l.len() as u64 + 1).sum::<u64>());
        assert_eq!((out[1].message.as_str(), out[1].exception.as_str()), ("Stopping server", ""));
        assert_eq!(chrono::DateTime::from_timestamp_millis(out[1].timestamp).unwrap().second(), 3);
    }

    #[test]
    fn folder_streams_unparsed_lines_whole_and_late_continuations_inherit() {
        let now = utc_noon();
        let mut folder = Folder::default();
        assert_eq!(folder.push(1, "\tat orphan.Frame(X.java:1)", &now), None);
        let orphan = folder.push(2, "plain banner line", &now).unwrap();
        assert_eq!((orphan.level, orphan.source.as_str()), (LogLevel::Info, "server"));
        assert_eq!((orphan.message.as_str(), orphan.exception.as_str()), ("\tat orphan.Frame(X.java:1)", ""));
        let banner = folder.push(3, "[15:00:00] [Server thread/WARN]: [Foo] bad", &now).unwrap();
        assert_eq!((banner.message.as_str(), banner.source.as_str()), ("plain banner line", "server"));
        let warn = folder.flush().unwrap();
        assert_eq!((warn.level, warn.source.as_str(), warn.message.as_str()), (LogLevel::Warn, "Foo", "bad"));
        // After the flush (the 100 ms rule) a late trace line is its own entry.
        assert_eq!(folder.push(4, "\tat late.Frame(X.java:2)", &now), None);
        let late = folder.flush().unwrap();
        assert_eq!((late.offset, late.level, late.source.as_str()), (4, LogLevel::Warn, "Foo"));
        assert_eq!((late.message.as_str(), late.exception.as_str()), ("", "\tat late.Frame(X.java:2)"));
    }

    #[test]
    fn a_huge_trace_goes_on_in_a_new_entry() {
        let now = utc_noon();
        let mut folder = Folder::default();
        assert_eq!(folder.push(1, "[15:00:00] [Server thread/ERROR]: overflow", &now), None);
        let frame = format!("\tat a.b.C.d(C.java:1) {}", "x".repeat(1000));
        let mut done = Vec::new();
        for i in 0..300u64 {
            done.extend(folder.push(100 + i, &frame, &now));
        }
        done.extend(folder.flush());
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|e| e.exception.len() < MAX_EXCEPTION));
        assert_eq!(done.iter().map(|e| e.exception.lines().count()).sum::<usize>(), 300);
        assert_eq!((done[1].level, done[1].message.as_str()), (LogLevel::Error, ""));
        assert_eq!(done[1].offset, 100 + done[0].exception.lines().count() as u64);
    }

    #[test]
    fn tps_line() {
        assert_eq!(tps("§6TPS from last 1m, 5m, 15m: §a20.0, §a19.98, §a19.95"), Some(20.0));
        assert_eq!(tps("TPS from last 1m, 5m, 15m: *20.0, *20.0, *20.0"), Some(20.0));
        assert_eq!(tps("§6TPS from last 1m, 5m, 15m: §c12.5, §e17.0, §a19.9"), Some(12.5));
        assert_eq!(tps("<Steve> TPS is fine"), None);
        assert_eq!(tps("TPS from last 1m, 5m, 15m: nope"), None);
    }

    /// Folds a sample file from tests/data the way the tailer does.
    fn fold(text: &str) -> Vec<Entry> {
        let now = utc_noon();
        let mut folder = Folder::default();
        let mut out = Vec::new();
        let mut pos = 0u64;
        for line in text.lines() {
            out.extend(folder.push((1 << 40) + pos, line, &now));
            pos += line.len() as u64 + 1;
        }
        out.extend(folder.flush());
        out
    }

    fn find<'a>(entries: &'a [Entry], start: &str) -> &'a Entry {
        entries.iter().find(|e| e.message.starts_with(start)).unwrap_or_else(|| panic!("no entry {start:?}"))
    }

    fn markers_of(entries: &[Entry]) -> Vec<Marker> {
        entries.iter().filter_map(|e| marker(&e.source, &e.message)).collect()
    }

    #[test]
    fn sample_vanilla_log() {
        let text = include_str!("../tests/data/latest-vanilla.log");
        let entries = fold(text);
        assert_eq!(entries.len(), text.lines().count() - 8);
        assert!(entries.iter().all(|e| e.source == SERVER_SOURCE), "vanilla names no plugin");
        let warn = find(&entries, "Can't keep up!");
        assert_eq!(warn.level, LogLevel::Warn);
        let err = find(&entries, "Failed to handle packet");
        assert_eq!(err.level, LogLevel::Error);
        assert!(err.exception.starts_with("java.lang.IllegalStateException: Ticking block entity\n\tat "));
        assert!(err.exception.contains("\nCaused by: java.lang.NullPointerException"));
        assert!(err.exception.ends_with("\t... 4 more"));
        assert_eq!(err.exception.lines().count(), 8);
        assert_eq!(find(&entries, "[Server] Welcome").source, SERVER_SOURCE);
        assert_eq!(find(&entries, "<Steve> hello").source, SERVER_SOURCE);
        use Marker::*;
        assert_eq!(markers_of(&entries), [Starting, Done, Stopping, Stopping, AllSaved]);
        // Offsets are the byte positions of first lines, strictly increasing.
        assert!(entries.windows(2).all(|w| w[0].offset < w[1].offset));
        let third = text.lines().take(2).map(|l| l.len() as u64 + 1).sum::<u64>();
        assert_eq!(entries[2].offset, (1 << 40) + third);
    }

    #[test]
    fn sample_paper_log() {
        let text = include_str!("../tests/data/paper.log");
        let entries = fold(text);
        assert_eq!(entries.len(), text.lines().count() - 7);
        assert_eq!(find(&entries, "Loading server plugin LuckPerms").source, "LuckPerms");
        let w = find(&entries, "You are running an unsupported");
        assert_eq!((w.level, w.source.as_str()), (LogLevel::Warn, "Essentials"));
        assert_eq!(find(&entries, "[Not Secure] <Alex>").source, SERVER_SOURCE);
        let e = find(&entries, "Could not pass event");
        assert!(e.exception.starts_with("org.bukkit.event.EventException: null\n"));
        assert!(
            e.exception.contains("Caused by: java.lang.IllegalStateException") && e.exception.ends_with("... 3 more")
        );
        let tps: Vec<f64> = entries.iter().filter_map(|e| tps(&e.message)).collect();
        assert_eq!(tps, [20.0, 17.2]);
        use Marker::*;
        assert_eq!(markers_of(&entries), [Starting, Done, Stopping, Stopping, AllSaved]);
    }

    #[test]
    fn sample_spigot_console_log() {
        let text = include_str!("../tests/data/spigot-console.log");
        let entries = fold(text);
        assert_eq!(entries.len(), text.lines().count() - 5);
        assert_eq!(find(&entries, "Loading Vault").source, "Vault");
        let w = find(&entries, "Could not load region data");
        assert_eq!((w.level, w.source.as_str()), (LogLevel::Warn, "WorldGuard"));
        assert_eq!(tps(&find(&entries, "TPS from last").message), Some(20.0));
        let e = find(&entries, "Error occurred while enabling");
        assert_eq!(e.level, LogLevel::Error);
        assert!(e.exception.starts_with("java.lang.NoClassDefFoundError") && e.exception.ends_with("... 1 more"));
    }

    #[test]
    fn sample_forge_logs() {
        let text = include_str!("../tests/data/forge.log");
        let entries = fold(text);
        assert_eq!(entries.len(), text.lines().count() - 6);
        assert_eq!(entries[0].source, "cpw.mods.modlauncher.Launcher");
        let want = DateTime::parse_from_rfc3339("2026-11-28T15:30:00.123+01:00").unwrap().timestamp_millis();
        assert_eq!(entries[0].timestamp, want);
        assert_eq!((entries[2].level, entries[2].source.as_str()), (LogLevel::Warn, "mixin"));
        assert_eq!(find(&entries, "Starting JEI").source, "jei");
        assert_eq!(find(&entries, "Preparing crash report").level, LogLevel::Error, "FATAL is ERROR");
        let crash = find(&entries, "Encountered an unexpected exception");
        assert!(crash.exception.starts_with("net.minecraft.ReportedException: Ticking entity\n"));
        use Marker::*;
        assert_eq!(markers_of(&entries), [Starting, Done, Stopping, AllSaved]);

        let text = include_str!("../tests/data/forge-console.log");
        let entries = fold(text);
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[0].source, "minecraft");
        assert_eq!(entries[1].source, "jei");
        assert_eq!(markers_of(&entries), [Starting, Done, Stopping]);
    }

    #[test]
    fn sample_fabric_log() {
        let text = include_str!("../tests/data/fabric.log");
        let entries = fold(text);
        // The mod list's lines have no prefix: each is an entry of its own.
        assert_eq!(entries.len(), text.lines().count());
        let listed = find(&entries, "\t- fabric-api");
        assert_eq!(
            (listed.level, listed.source.as_str(), listed.exception.as_str()),
            (LogLevel::Info, SERVER_SOURCE, "")
        );
        assert_eq!(find(&entries, "Mod lithium uses").level, LogLevel::Warn);
        use Marker::*;
        assert_eq!(markers_of(&entries), [Starting, Done, Stopping, Stopping, AllSaved]);
    }

    #[test]
    fn markers() {
        assert_eq!(marker("server", "Starting minecraft server version 1.21.1"), Some(Marker::Starting));
        assert_eq!(marker("server", "Done (5.123s)! For help, type \"help\""), Some(Marker::Done));
        assert_eq!(marker("minecraft", "Done (9.0s)! For help, type \"help\""), Some(Marker::Done));
        assert_eq!(marker("server", "Stopping the server"), Some(Marker::Stopping));
        assert_eq!(marker("server", "Stopping server"), Some(Marker::Stopping));
        assert_eq!(marker("server", "ThreadedAnvilChunkStorage: All dimensions are saved"), Some(Marker::AllSaved));
        assert_eq!(marker("server", "<Steve> Done (joke)"), None);
        assert_eq!(marker("Essentials", "Done (1s)"), None);
    }
}
