use clap::Parser;

fn main() {
    if let Err(err) = fitbench::cli::run(fitbench::cli::Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
