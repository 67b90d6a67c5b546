//! The hub's command line: subcommands, flags and their usage texts, and
//! loading a [`Config`] from the file, the environment and the flags (in
//! that order of precedence, lowest first).

use std::path::PathBuf;

use uuid::Uuid;

use super::{err, Config, ConfigError};
use aymc_cli::{flag_value, split_flag};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the hub.
    Serve,
    /// Print a test JWT.
    Token {
        /// `--sub`
        sub: Uuid,
        /// `--role`
        role: Option<String>,
        /// `--servers`
        servers: Vec<Uuid>,
        /// `--ttl`
        ttl_s: i64,
    },
    /// Validate the configuration and exit.
    CheckConfig,
    /// Print the usage of a subcommand (`None`: of all of them).
    Help(Option<&'static str>),
    /// Print the version.
    Version,
}

/// Usage text for `--help`.
pub const USAGE: &str = "\
usage: aymc-hub [serve] [--config FILE] [--listen ADDR]
       aymc-hub token --sub UUID [--role admin|service|user] [--servers UUID,..] [--ttl SECONDS] [--config FILE]
       aymc-hub check-config [--config FILE]
       aymc-hub SUBCOMMAND --help | --version
environment: AYMC_CONFIG, AYMC_LISTEN, AYMC_JWT_SECRET, AYMC_LOG (log filter, as RUST_LOG)";

/// Usage of `aymc-hub serve --help`.
pub const USAGE_SERVE: &str = "\
usage: aymc-hub [serve] [--config FILE] [--listen ADDR]
Runs the hub until SIGTERM or SIGINT; SIGHUP reloads what can change without a restart.
  --config FILE   the TOML file (else AYMC_CONFIG; else defaults)
  --listen ADDR   the address to listen on, IP:port (else AYMC_LISTEN, else the file's listen)
environment: AYMC_CONFIG, AYMC_LISTEN, AYMC_JWT_SECRET, AYMC_LOG, CREDENTIALS_DIRECTORY,
             NOTIFY_SOCKET, WATCHDOG_USEC, JOURNAL_STREAM (set by systemd)";

/// Usage of `aymc-hub token --help`.
pub const USAGE_TOKEN: &str = "\
usage: aymc-hub token --sub UUID [--role admin|service|user] [--servers UUID,..] [--ttl SECONDS] [--config FILE]
Prints a JWT signed with the configured HS256 secret (for tests and tools).
  --sub UUID        the user (required)
  --role ROLE       admin, service or user (default: none, a user)
  --servers UUIDS   comma-separated servers the user may watch
  --ttl SECONDS     lifetime (default 3600)
  --config FILE     the TOML file (else AYMC_CONFIG)";

/// Usage of `aymc-hub check-config --help`.
pub const USAGE_CHECK_CONFIG: &str = "\
usage: aymc-hub check-config [--config FILE] [--listen ADDR]
Validates the configuration: prints `config ok: listening on ADDR` and exits 0,
or prints one error line and exits 2. Warnings (a JWT secret file readable
by group or others) go to stderr and do not change the exit code.
  --config FILE   the TOML file (else AYMC_CONFIG)";

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    /// The subcommand.
    pub command: Command,
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
}

impl Cli {
    /// Parses the arguments after the program name.
    ///
    /// # Errors
    /// An unknown subcommand or flag, a missing or invalid value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cli, ConfigError> {
        let mut args = args.into_iter().peekable();
        let sub = match args.peek().map(String::as_str) {
            Some("serve" | "token" | "check-config") => args.next(),
            _ => None,
        };
        let (mut config, mut listen) = (None, None);
        let (mut user, mut role, mut servers, mut ttl_s) = (None, None, Vec::new(), 3600);
        let mut flags_help = false;
        while let Some(arg) = args.next() {
            let (flag, inline) = split_flag(&arg);
            let mut value = || flag_value(&flag, &inline, &mut args);
            match (sub.as_deref(), flag.as_str()) {
                (_, "-h" | "--help") => flags_help = true,
                (_, "-V" | "--version") => return Ok(Cli { command: Command::Version, config, listen }),
                (_, "--config") => config = Some(PathBuf::from(value()?)),
                (None | Some("serve"), "--listen") => listen = Some(value()?),
                (Some("token"), "--sub") => {
                    let v = value()?;
                    user = Some(Uuid::try_parse(&v).map_err(|_| ConfigError(format!("--sub: '{v}' is not a UUID")))?);
                }
                (Some("token"), "--role") => {
                    let v = value()?;
                    if !matches!(v.as_str(), "admin" | "service" | "user") {
                        return err(format!("--role: '{v}' is not one of admin, service, user"));
                    }
                    role = Some(v);
                }
                (Some("token"), "--servers") => {
                    for s in value()?.split(',').filter(|s| !s.is_empty()) {
                        servers.push(
                            Uuid::try_parse(s).map_err(|_| ConfigError(format!("--servers: '{s}' is not a UUID")))?,
                        );
                    }
                }
                (Some("token"), "--ttl") => {
                    let v = value()?;
                    ttl_s = v
                        .parse()
                        .ok()
                        .filter(|t| *t > 0)
                        .ok_or_else(|| ConfigError(format!("--ttl: '{v}' is not a positive number of seconds")))?;
                }
                _ => return err(format!("unknown argument '{arg}' (see aymc-hub --help)")),
            }
        }
        let command = match sub.as_deref() {
            Some("serve") if flags_help => Command::Help(Some(USAGE_SERVE)),
            Some("token") if flags_help => Command::Help(Some(USAGE_TOKEN)),
            Some("check-config") if flags_help => Command::Help(Some(USAGE_CHECK_CONFIG)),
            _ if flags_help => Command::Help(None),
            Some("token") => Command::Token {
                sub: user.ok_or_else(|| ConfigError("token: --sub UUID is required".into()))?,
                role,
                servers,
                ttl_s,
            },
            Some("check-config") => Command::CheckConfig,
            _ => Command::Serve,
        };
        Ok(Cli { command, config, listen })
    }

    /// Loads the configuration: file (`--config`, else `AYMC_CONFIG`), then
    /// the environment, then flags, then validation.
    ///
    /// # Errors
    /// An unreadable or invalid file, a bad value, a failed validation.
    pub fn load(&self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let path = self.config.clone().or_else(|| env("AYMC_CONFIG").map(PathBuf::from));
        let mut config = match &path {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.auth.resolve_secret(&env)?;
        config.alerts.resolve_files()?;
        let listen = self.listen.clone().or_else(|| env("AYMC_LISTEN"));
        if let Some(listen) = listen {
            config.listen = listen
                .parse()
                .map_err(|_| ConfigError(format!("listen: '{listen}' is not an address like 127.0.0.1:8080")))?;
        }
        config.validate()?;
        Ok(config)
    }
}
