//! The `streamcap` binary: parse the command line and hand over to the library.

use clap::Parser;
use streamcap::cli::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's free mimalloc pages to the system (see
/// `streamcap::cli::serve`); `force` also purges what is not yet due.
fn release_memory(force: bool) {
    // SAFETY: `mi_collect` has no preconditions: it frees and purges only
    // what the calling thread's heap no longer uses.
    unsafe { libmimalloc_sys::mi_collect(force) }
}

fn main() {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let result = match &cli.command {
        None => streamcap::cli::serve(&cli.serve, release_memory),
        Some(Command::Serve(o)) => streamcap::cli::serve(o, release_memory),
        Some(Command::Mint(args)) => args.run(&mut out),
        Some(Command::Keygen) => streamcap::cli::keygen(&mut out),
    };
    if let Err(e) = result {
        eprintln!("streamcap: {e}");
        std::process::exit(2);
    }
}
