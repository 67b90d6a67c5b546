//! `aymc-loadgen`: the load generator of `scripts/bench`. It drives a real
//! `aymc-hub` process through real connections and prints one JSON object
//! per run; see `docs/PERFORMANCE.md` and `aymc-loadgen --help`. `main`
//! parses the command line, runs the scenario and prints its JSON on stdout.

use std::process::ExitCode;

use aymc_loadgen::{cli, scenarios};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("LOADGEN_LOG", "info"))
        .format_timestamp_millis()
        .init();
    let opts = match cli::Opts::parse(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{}", cli::LOADGEN_USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("aymc-loadgen: {e}\n\n{}", cli::LOADGEN_USAGE);
            return ExitCode::from(2);
        }
    };
    match scenarios::run(&opts) {
        Ok(result) => {
            let text = result.to_string();
            println!("{text}");
            if let Some(path) = &opts.out {
                if let Err(e) = std::fs::write(path, format!("{text}\n")) {
                    eprintln!("aymc-loadgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aymc-loadgen: {}: {e}", opts.scenario);
            ExitCode::FAILURE
        }
    }
}
