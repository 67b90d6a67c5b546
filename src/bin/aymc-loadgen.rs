//! `aymc-loadgen`: the load generator of `scripts/bench`. It drives a real
//! `aymc-hub` process through real connections and prints one JSON object
//! per run; see `docs/PERFORMANCE.md` and `aymc-loadgen --help`.

#[path = "../loadgen/mod.rs"]
mod loadgen;

fn main() -> std::process::ExitCode {
    loadgen::main()
}
