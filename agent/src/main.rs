//! `aymc-agent`: parse the command line, validate the configuration, run
//! the agent until SIGTERM or SIGINT. A configuration error is one line on
//! stderr and exit code 2; a failure to start (state file, listen address)
//! is logged and exit code 1. SIGHUP does not reload: it logs that a
//! restart is needed and the agent runs on.

use std::process::ExitCode;

use aymc_agent::{
    self,
    config::{AgentCli, AgentCommand, AGENT_USAGE},
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let cli = match AgentCli::parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) => return config_error(e),
    };
    match cli.command {
        AgentCommand::Help => {
            println!("{AGENT_USAGE}");
            return ExitCode::SUCCESS;
        }
        AgentCommand::Version => {
            println!("aymc-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        AgentCommand::Run => {}
    }
    let config = match cli.load(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("AYMC_LOG", "info")).init();
    // Installed before the workers start, so a SIGTERM during startup is
    // caught and waits for a clean stop instead of killing a state-file write.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wait = move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                log::warn!("SIGHUP: aymc-agent does not reload its configuration; restart it to apply changes");
                continue;
            }
            log::info!("signal {signal}");
            break;
        }
    };
    match aymc_agent::run(&config, wait) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: aymc_agent::config::ConfigError) -> ExitCode {
    eprintln!("aymc-agent: {e}");
    ExitCode::from(2)
}
