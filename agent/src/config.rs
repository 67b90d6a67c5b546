//! The agent's configuration: the command line (`--config`, `--listen`),
//! `AYMC_AGENT_*` environment variables and the TOML file, merged (flag >
//! environment > file > default) into a validated [`AgentSettings`] before
//! anything runs. A problem is one [`ConfigError`] line, which `main` prints
//! and answers with exit code 2. Touches no socket and no log file.
//!
//! Relative paths in the file (`dir`, `pid_file`, `state_file`) are taken
//! relative to the file's directory, so a config works wherever it is started from.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

pub use aymc_cli::ConfigError;
use aymc_cli::{flag_value, read_toml, split_flag};

use crate::tenant::TenantPath;

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Entries kept per server when `history_lines` is not set.
pub const DEFAULT_HISTORY_LINES: usize = 10_000;
/// The most `history_lines` accepted (memory: a few hundred bytes per entry).
pub const MAX_HISTORY_LINES: usize = 10_000_000;
/// Bytes of entries kept per server when `history_bytes` is not set.
pub const DEFAULT_HISTORY_BYTES: usize = 16 * 1024 * 1024;
/// The least `history_bytes` accepted (a few of the largest entries).
pub const MIN_HISTORY_BYTES: usize = 1024 * 1024;
/// The most `history_bytes` accepted.
pub const MAX_HISTORY_BYTES: usize = 64 * 1024 * 1024 * 1024;
/// `listen` when nothing sets it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// One Minecraft server on this host (`[[servers]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Its id: a UUID, written lowercase with hyphens.
    pub id: String,
    /// Display name (`ServerInfo.name`); may be empty.
    pub name: String,
    /// The server's directory: `logs/latest.log` and `crash-reports/` under it.
    pub dir: PathBuf,
    /// File holding the Java process's pid; without it, no process metrics
    /// and status comes from the log alone.
    pub pid_file: Option<PathBuf>,
    /// Game port for the Server List Ping; without it, no player counts.
    pub port: Option<u16>,
}

impl ServerSettings {
    /// `dir/logs/latest.log`
    pub fn latest_log(&self) -> PathBuf {
        self.dir.join("logs").join("latest.log")
    }

    /// `dir/crash-reports`
    pub fn crash_reports(&self) -> PathBuf {
        self.dir.join("crash-reports")
    }

    /// `logs/latest.log`, read without following links below `dir`.
    pub fn log_path(&self) -> TenantPath {
        TenantPath::new(&self.dir, "logs/latest.log")
    }

    /// `crash-reports/`, listed without following links below `dir`.
    pub fn crash_reports_path(&self) -> TenantPath {
        TenantPath::new(&self.dir, "crash-reports")
    }

    /// The pid file, read without following links below `dir` (or its
    /// last component, when it is elsewhere).
    pub fn pid_path(&self) -> Option<TenantPath> {
        self.pid_file.as_deref().map(|p| TenantPath::within(&self.dir, p))
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Address the gRPC service listens on (port 0: any free port).
    pub listen: SocketAddr,
    /// The agent's id when configured; else the one kept in the state file.
    pub id: Option<String>,
    /// Log entries kept per server for resuming hubs.
    pub history_lines: usize,
    /// Bytes of log entries kept per server (text plus bookkeeping); the
    /// oldest go first when either this or `history_lines` is reached.
    pub history_bytes: usize,
    /// Where generations, read positions and the generated id are kept.
    pub state_file: PathBuf,
    /// The servers.
    pub servers: Vec<ServerSettings>,
}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCommand {
    /// Run the agent.
    Run,
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Usage text for `--help`.
pub const AGENT_USAGE: &str = "\
usage: aymc-agent [--config FILE] [--listen ADDR]
environment: AYMC_AGENT_CONFIG, AYMC_AGENT_LISTEN, AYMC_LOG (log filter, as RUST_LOG);
             STATE_DIRECTORY (systemd) holds state.toml unless state_file is set";

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCli {
    /// What to do.
    pub command: AgentCommand,
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    id: Option<String>,
    history_lines: Option<usize>,
    history_bytes: Option<usize>,
    state_file: Option<PathBuf>,
    #[serde(default)]
    servers: Vec<FileServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    id: String,
    name: Option<String>,
    dir: PathBuf,
    pid_file: Option<PathBuf>,
    port: Option<u16>,
}

impl AgentCli {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    /// An unknown flag or a missing value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<AgentCli, ConfigError> {
        let mut cli = AgentCli { command: AgentCommand::Run, config: None, listen: None };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = split_flag(&arg);
            let mut value = || flag_value(&flag, &inline, &mut args);
            match flag.as_str() {
                "-h" | "--help" => cli.command = AgentCommand::Help,
                "-V" | "--version" => cli.command = AgentCommand::Version,
                "--config" => cli.config = Some(PathBuf::from(value()?)),
                "--listen" => cli.listen = Some(value()?),
                _ => return err(format!("unknown argument '{arg}' (see aymc-agent --help)")),
            }
        }
        Ok(cli)
    }

    /// Loads the configuration: the file (`--config`, else
    /// `AYMC_AGENT_CONFIG`), then the environment, then flags, then validation.
    ///
    /// # Errors
    /// No file named, an unreadable or invalid file, a bad value.
    pub fn load(&self, env: impl Fn(&str) -> Option<String>) -> Result<AgentSettings, ConfigError> {
        let Some(path) = self.config.clone().or_else(|| env("AYMC_AGENT_CONFIG").map(PathBuf::from)) else {
            return err("no configuration: pass --config FILE or set AYMC_AGENT_CONFIG");
        };
        let file: FileConfig = read_toml(&path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let listen_text = self
            .listen
            .clone()
            .or_else(|| env("AYMC_AGENT_LISTEN"))
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text
            .parse()
            .map_err(|_| ConfigError(format!("listen: '{listen_text}' is not an address like 127.0.0.1:50051")))?;
        let state_file = match (file.state_file, env("STATE_DIRECTORY")) {
            (Some(p), _) => base.join(p),
            // systemd may list several directories, separated by ':'.
            (None, Some(dirs)) if !dirs.is_empty() => {
                PathBuf::from(dirs.split(':').next().unwrap_or_default()).join("state.toml")
            }
            (None, _) => base.join("state.toml"),
        };
        let servers = file
            .servers
            .into_iter()
            .map(|s| ServerSettings {
                id: s.id,
                name: s.name.unwrap_or_default(),
                dir: base.join(s.dir),
                pid_file: s.pid_file.map(|p| base.join(p)),
                port: s.port,
            })
            .collect();
        let mut config = AgentSettings {
            listen,
            id: file.id,
            history_lines: file.history_lines.unwrap_or(DEFAULT_HISTORY_LINES),
            history_bytes: file.history_bytes.unwrap_or(DEFAULT_HISTORY_BYTES),
            state_file,
            servers,
        };
        config.validate()?;
        Ok(config)
    }
}

impl AgentSettings {
    /// Checks ranges and consistency; writes server ids in their canonical form.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            return err("id must not be empty (leave it out to have one generated)");
        }
        if !(1..=MAX_HISTORY_LINES).contains(&self.history_lines) {
            return err(format!("history_lines must be between 1 and {MAX_HISTORY_LINES}"));
        }
        if !(MIN_HISTORY_BYTES..=MAX_HISTORY_BYTES).contains(&self.history_bytes) {
            return err(format!("history_bytes must be between {MIN_HISTORY_BYTES} and {MAX_HISTORY_BYTES}"));
        }
        let mut seen = HashSet::new();
        for server in &mut self.servers {
            let id = Uuid::try_parse(&server.id)
                .map_err(|_| ConfigError(format!("servers: id '{}' is not a UUID", server.id)))?;
            server.id = id.hyphenated().to_string();
            if !seen.insert(id) {
                return err(format!("servers: id '{id}' appears twice"));
            }
            if !server.dir.is_dir() {
                return err(format!("servers: server '{id}': dir '{}' is not a directory", server.dir.display()));
            }
            if server.port == Some(0) {
                return err(format!("servers: server '{id}': port must not be 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// A temporary directory with an `srv/` server directory in it.
    fn dir() -> TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("srv")).unwrap();
        d
    }

    fn load(d: &TempDir, text: &str, env: &[(&str, &str)], args: &[&str]) -> Result<AgentSettings, ConfigError> {
        let path = d.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let mut argv = vec!["--config".to_string(), path.display().to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AgentCli::parse(argv)?.load(|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    const ONE: &str = "[[servers]]\nid = \"550E8400-E29B-41D4-A716-446655440000\"\nname = \"Survival\"\ndir = \"srv\"\npid_file = \"srv/server.pid\"\nport = 25565\n";

    #[test]
    fn defaults_and_relative_paths() {
        let d = dir();
        let c = load(&d, ONE, &[], &[]).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!((c.id, c.history_lines, c.history_bytes), (None, DEFAULT_HISTORY_LINES, DEFAULT_HISTORY_BYTES));
        let c = load(&d, &format!("history_bytes = 2097152\n{ONE}"), &[], &[]).unwrap();
        assert_eq!(c.history_bytes, 2 << 20);
        assert_eq!(c.state_file, d.path().join("state.toml"));
        let s = &c.servers[0];
        assert_eq!(s.id, "550e8400-e29b-41d4-a716-446655440000");
        assert_eq!((s.name.as_str(), s.port), ("Survival", Some(25565)));
        assert_eq!(s.dir, d.path().join("srv"));
        assert_eq!(s.latest_log(), d.path().join("srv/logs/latest.log"));
        assert_eq!(s.pid_file, Some(d.path().join("srv/server.pid")));
    }

    #[test]
    fn flag_beats_env_beats_file_and_systemd_state_directory() {
        let d = dir();
        let text = format!("listen = \"127.0.0.1:1\"\n{ONE}");
        let env = [("AYMC_AGENT_LISTEN", "127.0.0.1:2"), ("STATE_DIRECTORY", "/var/lib/aymc-agent:/other")];
        assert_eq!(load(&d, &text, &[], &[]).unwrap().listen.port(), 1);
        let c = load(&d, &text, &env, &[]).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.state_file, PathBuf::from("/var/lib/aymc-agent/state.toml"));
        assert_eq!(load(&d, &text, &env, &["--listen=127.0.0.1:0"]).unwrap().listen.port(), 0);
        let c = load(&d, &format!("state_file = \"st/x.toml\"\n{ONE}"), &env, &[]).unwrap();
        assert_eq!(c.state_file, d.path().join("st/x.toml"));
    }

    #[test]
    fn errors_are_one_line() {
        let d = dir();
        for (text, want) in [
            ("histroy_lines = 3\n", "line 1"),
            ("history_lines = 0\n", "history_lines"),
            ("history_bytes = 1000\n", "history_bytes must be between"),
            ("history_bytes = 68719476737\n", "history_bytes must be between"),
            ("history_bytes = -1\n", "line 1"),
            ("listen = \"localhost\"\n", "listen"),
            ("id = \" \"\n", "id must not be empty"),
            ("[[servers]]\nid = \"x\"\ndir = \"srv\"\n", "not a UUID"),
            ("[[servers]]\nid = \"550e8400-e29b-41d4-a716-446655440000\"\ndir = \"nope\"\n", "not a directory"),
            (&format!("{ONE}{ONE}"), "appears twice"),
            ("[[servers]]\nid = \"550e8400-e29b-41d4-a716-446655440000\"\ndir = \"srv\"\nport = 0\n", "port"),
            ("[[servers]]\nid = \"550e8400-e29b-41d4-a716-446655440000\"\n", "dir"),
        ] {
            let e = load(&d, text, &[], &[]).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{text:?}: {e}");
        }
        assert!(AgentCli::parse(["--bogus".to_string()]).is_err());
        assert!(AgentCli::parse(["--config".to_string()]).is_err());
        let e = AgentCli::parse([]).unwrap().load(|_| None).unwrap_err().to_string();
        assert!(e.contains("AYMC_AGENT_CONFIG"), "{e}");
    }
}
