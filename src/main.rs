//! `aymc-hub`: parse the command line, validate the configuration, run.
//! A configuration error is one line on stderr and exit code 2.

use std::process::ExitCode;

use aymc_hub::agent_link;
use aymc_hub::auth::Authenticator;
use aymc_hub::config::{Cli, Command, Config, ConfigError, USAGE};
use aymc_hub::logging;
use aymc_hub::notify::Notifier;
use aymc_hub::reactor::Reactor;
use aymc_hub::store::{self, StoreError};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aymc-hub: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, ConfigError> {
    let cli = Cli::parse(std::env::args().skip(1))?;
    match &cli.command {
        Command::Help(usage) => {
            println!("{}", usage.unwrap_or(USAGE));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Version => {
            println!("aymc-hub {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let config = cli.load(|k| std::env::var(k).ok())?;
    let auth = authenticator(&config)?;
    if let Some(warning) = config.auth.secret_file_warning() {
        if cli.command == Command::CheckConfig {
            eprintln!("aymc-hub: {warning}");
        }
    }
    match cli.command {
        Command::CheckConfig => {
            println!("config ok: listening on {}", config.listen);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { sub, role, servers, ttl_s } => {
            println!("{}", auth.mint(sub, role.as_deref(), &servers, ttl_s).map_err(ConfigError)?);
            Ok(ExitCode::SUCCESS)
        }
        _ => Ok(serve(&cli, config, auth)),
    }
}

fn authenticator(config: &Config) -> Result<Authenticator, ConfigError> {
    let owners = config.servers.iter().filter_map(|s| Some((s.id, s.owner?))).collect();
    Authenticator::new(&config.auth, owners).map_err(ConfigError)
}

fn serve(cli: &Cli, config: Config, auth: Authenticator) -> ExitCode {
    logging::init(&config.log);
    if let Some(warning) = config.auth.secret_file_warning() {
        log::warn!("{warning}");
    }
    // The soft limit of open files up to the hard one, so that
    // max_connections can be reached.
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if (fds as usize) < config.limits.max_connections + 64 {
        log::warn!("open-file limit {fds} is below limits.max_connections; accepts will pause when it runs out");
    }
    let listen = config.listen;
    let agents = config.clone();
    let (store, recovered) = match store::open(&config.history) {
        Ok((store, recovered)) => {
            log::info!("on-disk history at {} (epoch {})", store.path().display(), recovered.epoch);
            (Some(store), Some(recovered))
        }
        Err(StoreError::NotConfigured) => (None, None),
        Err(e) => {
            log::error!("on-disk history unavailable ({e}); keeping history in memory only");
            (None, None)
        }
    };
    let offsets = recovered.as_ref().map(|r| r.offsets.clone()).unwrap_or_default();
    let mut reactor = match Reactor::bind(config, auth, store, recovered) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match reactor.local_addr() {
        Ok(addr) => log::info!("listening on {addr}"),
        Err(e) => log::warn!("listening, address unknown: {e}"),
    }
    let reload = cli.clone();
    reactor.set_reload(Box::new(move || reload.load(|k| std::env::var(k).ok())));
    reactor.set_notifier(Notifier::from_env(|k| std::env::var(k).ok()));
    if let Err(e) = agent_link::spawn(&agents, reactor.link(), offsets) {
        log::error!("cannot start the agent thread: {e}");
        return ExitCode::FAILURE;
    }
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
