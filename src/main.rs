//! The `streamcap` binary: parse the command line and hand over to the library.

use clap::Parser;
use streamcap::cli::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let result = match &cli.command {
        None => streamcap::cli::serve(&cli.serve),
        Some(Command::Serve(o)) => streamcap::cli::serve(o),
        Some(Command::Mint(args)) => args.run(&mut out),
        Some(Command::Keygen) => streamcap::cli::keygen(&mut out),
    };
    if let Err(e) = result {
        eprintln!("streamcap: {e}");
        std::process::exit(2);
    }
}
