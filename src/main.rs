//! The `streamcap` binary: parse the command line and hand over to the library.

use clap::Parser;
use streamcap::cli::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's free mimalloc pages to the system (see
/// `streamcap::app::serve`); `force` also purges what is not yet due.
fn release_memory(force: bool) {
    // SAFETY: `mi_collect` has no preconditions: it frees and purges only
    // what the calling thread's heap no longer uses.
    unsafe { libmimalloc_sys::mi_collect(force) }
}

/// Turns transparent huge pages off for the serving process, unless the
/// operator chose with `MIMALLOC_ALLOW_THP` (mimalloc's own option, applied
/// when it starts). mimalloc advises its arenas `MADV_HUGEPAGE`; once it has
/// returned the parts of a 2 MiB range that expired sessions freed, the
/// kernel's khugepaged re-fills the whole range as one huge page again, so
/// with THP on, RSS after an expiry crept back up with no traffic at all
/// (docs/design.md, "Memory"). Heartbeat throughput measured the
/// same either way.
fn keep_returned_memory_returned() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this
    // process's huge-page policy. A kernel without it refuses it; the server
    // then runs as before, so the result is not checked.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Raises the open-files soft limit to the hard limit the operator set:
/// each connection holds a descriptor, and the usual soft limit of 1024 is
/// kept low only for programs that use `select`. `streamcap::app::serve`
/// then warns if even the hard limit cannot hold `max_connections`.
fn raise_open_files_limit() {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct
        // passed, which lives on this stack frame. If either fails the limit
        // stays as it was, which the warning then reports.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    if matches!(cli.command, None | Some(Command::Serve(_))) {
        keep_returned_memory_returned();
        raise_open_files_limit();
    }
    let result = match &cli.command {
        None => streamcap::app::serve(&cli.serve, release_memory),
        Some(Command::Serve(o)) => streamcap::app::serve(o, release_memory),
        Some(Command::Mint(args)) => args.run(&mut out),
        Some(Command::Keygen) => streamcap::cli::keygen(&mut out),
    };
    if let Err(e) = result {
        eprintln!("streamcap: {e}");
        std::process::exit(2);
    }
}
