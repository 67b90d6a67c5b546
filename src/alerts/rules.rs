//! User rules (`[[alerts.rules]]`) compiled for the reactor: every rule's
//! message regex in one `RegexSet`, every exception regex in another, so a
//! log line costs one `is_match` per set however many rules there are (and
//! nothing below the lowest level any rule asks for). Each regex is bounded
//! in source length and compiled size; an error names the rule.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use smallvec::SmallVec;
use uuid::Uuid;

use super::builtin::head;
use super::config::{UserRule, MAX_PATTERN_BYTES};
use crate::config::ConfigError;
use crate::protocol::{Level, LogEntry};

/// One regex's compiled size at most (the regex crate's `size_limit`).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// All of one field's regexes together, compiled, at most.
pub const SET_SIZE_LIMIT: usize = 8 * 1024 * 1024;
/// The lazy DFA's cache of one set at most.
const SET_DFA_LIMIT: usize = 2 * 1024 * 1024;

/// What a compiled rule checks besides its regexes.
#[derive(Debug)]
struct Compiled {
    level: Level,
    servers: Vec<Uuid>,
    /// Has a message regex / an exception regex.
    message: bool,
    exception: bool,
}

/// The compiled user rules. See the module docs.
#[derive(Debug)]
pub struct UserRules {
    rules: Vec<Compiled>,
    messages: Option<(RegexSet, Vec<usize>)>,
    exceptions: Option<(RegexSet, Vec<usize>)>,
    /// The lowest level any rule takes (`None`: no rules).
    min_level: Option<Level>,
}

/// A regex error in one line: the regex crate's message spans several
/// (the pattern, a caret, the reason).
fn one_line(e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => format!("compiles to more than {limit} bytes"),
        // The caret line points into the pattern printed above it.
        e => e
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~'))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn check(rule: &str, field: &str, pattern: &str) -> Result<(), ConfigError> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(ConfigError(format!(
            "alerts.rules '{rule}': {field} regex is {} bytes; at most {MAX_PATTERN_BYTES}",
            pattern.len()
        )));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| ConfigError(format!("alerts.rules '{rule}': {field} regex: {}", one_line(&e))))
}

fn set(field: &str, patterns: &[&str]) -> Result<Option<RegexSet>, ConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    RegexSetBuilder::new(patterns)
        .size_limit(SET_SIZE_LIMIT)
        .dfa_size_limit(SET_DFA_LIMIT)
        .build()
        .map(Some)
        .map_err(|e| ConfigError(format!("alerts.rules: the {field} regexes together: {}", one_line(&e))))
}

impl UserRules {
    /// No user rules.
    pub fn none() -> UserRules {
        UserRules { rules: Vec::new(), messages: None, exceptions: None, min_level: None }
    }

    /// Compiles the rules, in order.
    ///
    /// # Errors
    /// A regex that is too long, invalid or too big compiled (named by its
    /// rule), or all of them together too big.
    pub fn compile(rules: &[UserRule]) -> Result<UserRules, ConfigError> {
        let (mut msg, mut msg_map, mut exc, mut exc_map) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, rule) in rules.iter().enumerate() {
            if let Some(p) = &rule.message {
                check(&rule.name, "message", p)?;
                msg.push(p.as_str());
                msg_map.push(i);
            }
            if let Some(p) = &rule.exception {
                check(&rule.name, "exception", p)?;
                exc.push(p.as_str());
                exc_map.push(i);
            }
        }
        Ok(UserRules {
            rules: rules
                .iter()
                .map(|r| Compiled {
                    level: r.level,
                    servers: r.servers.clone(),
                    message: r.message.is_some(),
                    exception: r.exception.is_some(),
                })
                .collect(),
            messages: set("message", &msg)?.map(|s| (s, msg_map)),
            exceptions: set("exception", &exc)?.map(|s| (s, exc_map)),
            min_level: rules.iter().map(|r| r.level).min(),
        })
    }

    /// Whether any rule looks at lines of this level.
    pub fn wants(&self, level: Level) -> bool {
        self.min_level.is_some_and(|min| level >= min)
    }

    /// The rules (indexes, in order) a line matches: its level, its
    /// server, and every regex the rule has (on the first
    /// [`SCAN_BYTES`](super::builtin::SCAN_BYTES) of the field).
    pub fn matching(&self, e: &LogEntry) -> SmallVec<[usize; 4]> {
        let mut out = SmallVec::new();
        if !self.wants(e.level) {
            return out;
        }
        // One pass over (the head of) each field: `matches` reads it to
        // the end anyway when nothing matches.
        let hits = |field: &Option<(RegexSet, Vec<usize>)>, text: &str| -> SmallVec<[usize; 4]> {
            match field {
                Some((set, map)) => set.matches(head(text)).iter().filter_map(|i| map.get(i).copied()).collect(),
                None => SmallVec::new(),
            }
        };
        let msg = hits(&self.messages, &e.message);
        let exc = if e.exception.is_empty() { SmallVec::new() } else { hits(&self.exceptions, &e.exception) };
        for (i, r) in self.rules.iter().enumerate() {
            let ok = e.level >= r.level
                && (r.servers.is_empty() || r.servers.contains(&e.server_id))
                && (!r.message || msg.contains(&i))
                && (!r.exception || exc.contains(&i));
            if ok {
                out.push(i);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, message: Option<&str>, exception: Option<&str>, level: Level) -> UserRule {
        UserRule {
            name: name.into(),
            title: None,
            message: message.map(Into::into),
            exception: exception.map(Into::into),
            level,
            servers: Vec::new(),
            threshold: 1,
            window_s: 60,
            severity: crate::protocol::Severity::Warning,
            cooldown_s: 0,
        }
    }

    fn line(level: Level, message: &str, exception: &str) -> LogEntry {
        crate::alerts::tests::log_entry(Uuid::nil(), level, message, exception)
    }

    #[test]
    fn rules_match_by_regex_level_and_both_fields() {
        let rules = UserRules::compile(&[
            rule("grief", Some(r"(?i)\btnt\b"), None, Level::Debug),
            rule("db", Some("SQLException"), Some(r"at com\.zaxxer"), Level::Warn),
            rule("errors", None, None, Level::Error),
        ])
        .unwrap();
        assert_eq!(rules.matching(&line(Level::Info, "Steve placed TNT", "")).as_slice(), [0]);
        assert!(rules.matching(&line(Level::Info, "Steve placed a torch", "")).is_empty());
        // Both regexes needed for "db"; "errors" takes every ERROR line.
        assert_eq!(rules.matching(&line(Level::Error, "SQLException: gone", "")).as_slice(), [2]);
        let trace = "java.sql.SQLException: gone\n\tat com.zaxxer.hikari.Pool.get(Pool.java:1)";
        assert_eq!(rules.matching(&line(Level::Error, "SQLException: gone", trace)).as_slice(), [1, 2]);
        // Below the level "db" asks for.
        assert!(rules.matching(&line(Level::Info, "SQLException: gone", trace)).is_empty());
    }

    #[test]
    fn a_rule_limited_to_servers_ignores_the_others() {
        let mut r = rule("one", Some("x"), None, Level::Debug);
        let server = Uuid::new_v4();
        r.servers = vec![server];
        let rules = UserRules::compile(&[r]).unwrap();
        let mut l = line(Level::Info, "x", "");
        assert!(rules.matching(&l).is_empty());
        l.server_id = server;
        assert_eq!(rules.matching(&l).as_slice(), [0]);
    }

    #[test]
    fn a_bad_regex_is_one_line_naming_its_rule() {
        let e = UserRules::compile(&[
            rule("ok", Some("a"), None, Level::Debug),
            rule("broken", Some("(a"), None, Level::Debug),
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(e, "alerts.rules 'broken': message regex: regex parse error: (a error: unclosed group");
        let e =
            UserRules::compile(&[rule("huge", None, Some(r"\w{1000}\w{1000}"), Level::Debug)]).unwrap_err().to_string();
        assert!(e.starts_with("alerts.rules 'huge': exception regex: compiles to more than"), "{e}");
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        let e = UserRules::compile(&[rule("long", Some(&long), None, Level::Debug)]).unwrap_err().to_string();
        assert!(e.contains("at most 1024"), "{e}");
    }

    #[test]
    fn no_rules_want_no_lines() {
        let rules = UserRules::compile(&[]).unwrap();
        assert!(!rules.wants(Level::Error));
        assert!(rules.matching(&line(Level::Error, "x", "")).is_empty());
    }
}
