//! docs/spec.md §8 tools: `streamcap keygen` prints a key, `streamcap mint` prints
//! grants the server accepts; what `streamcap serve` says when it starts or
//! refuses to.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

/// `streamcap <args>` with no `STREAMCAP_*` variables but `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamcap"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("STREAMCAP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run streamcap")
}

fn run(args: &[&str]) -> String {
    let out = command(args, &[]);
    assert!(out.status.success(), "streamcap {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs a command that must fail: exit status 2, nothing on stdout; returns stderr.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = command(args, env);
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 errors");
    assert_eq!(out.status.code(), Some(2), "streamcap {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "streamcap {args:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    stderr
}

#[test]
fn keygen_prints_a_fresh_64_hex_key() {
    let a = run(&["keygen"]);
    let b = run(&["keygen"]);
    for key in [&a, &b] {
        let key = key.trim();
        assert_eq!(key.len(), 64, "{key:?}");
        assert!(key.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{key:?}");
    }
    assert_ne!(a, b);
}

#[test]
fn minted_grants_are_accepted() {
    let server = TestServer::dev();
    let user = unique("minted");
    let g = run(&["mint", "--user", &user, "--limit", "1"]);
    let g = g.trim();
    assert!(g.starts_with("g1."), "{g}");
    server.api.start_ok(&user, g);
    server.api.start(&user, g).expect_error(409, "limit_reached");

    // For a configured tenant, with its key from the config file.
    let dir = TempDir::new("mint");
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    let server = TestServer::start(file_config(&path));
    let path_text = path.display().to_string();
    let g = run(&["mint", "--config", &path_text, "--tenant", "acme", "--user", &user, "--limit", "2"]);
    server.api.start_ok(&user, g.trim());
}

/// What the kernel says of the process's transparent huge pages
/// (`THP_enabled` in `/proc/<pid>/status`, Linux 5.0 and later).
#[cfg(target_os = "linux")]
fn thp_enabled(server: &Binary) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("read /proc status");
    status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string())
}

/// The serving process turns transparent huge pages off (khugepaged would
/// re-fill memory the allocator returned after sessions expire), unless the
/// operator opts in with mimalloc's own `MIMALLOC_ALLOW_THP`.
#[cfg(target_os = "linux")]
#[test]
fn serving_turns_transparent_huge_pages_off_unless_told_otherwise() {
    let args: Vec<String> = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from).into();
    let server = Binary::spawn(&args);
    let Some(default) = thp_enabled(&server) else {
        eprintln!("this kernel does not report THP_enabled: nothing to check");
        return;
    };
    assert_eq!(default, "0", "huge pages still enabled for the server");
    if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        let opted_in = Binary::spawn_with_env(&args, &[("MIMALLOC_ALLOW_THP", "1")]);
        assert_eq!(thp_enabled(&opted_in).as_deref(), Some("1"), "MIMALLOC_ALLOW_THP=1 was not honoured");
    }
}

#[test]
fn help_says_where_dev_mode_listens() {
    let help = run(&["serve", "--help"]);
    assert!(help.contains("0.0.0.0:8080") && help.contains("dev mode"), "{help}");
    assert!(help.contains("127.0.0.1:8080"), "{help}");
}

#[test]
fn configuration_syntax_errors_name_line_column_and_key() {
    let dir = TempDir::new("syntax");
    let path = dir.path("streamcap.toml");
    std::fs::write(&path, "# streamcap\nlisten = 127.0.0.1:18080\n").unwrap();
    let path = path.display().to_string();
    let err = fails(&["serve", "--config", &path], &[]);
    assert!(err.contains(&format!("config file {path}: line 2, column 15, key listen: ")), "{err}");
}

#[test]
fn server_keys_alone_are_refused_with_what_a_real_configuration_is() {
    let keys = format!("s1:{KEY_S1}");
    let err = fails(&["serve", "--listen", "127.0.0.1:0"], &[("STREAMCAP_SERVER_KEYS", &keys)]);
    assert!(err.contains("no [[tenants]] configured"), "{err}");
    assert!(err.contains("a TOML file with one [[server_keys]] and one [[tenants]]"), "{err}");
    assert!(err.contains("streamcap serve --config streamcap.toml"), "{err}");
    assert!(err.contains("docs/operating.md, \"From dev mode to production in 5 minutes\""), "{err}");
    assert!(!err.contains(KEY_S1), "{err}");
}

/// `mint` checks each grant with the server's own rules: what the server
/// would refuse is an error (exit 2, nothing printed), not a grant.
#[test]
fn mint_refuses_what_the_server_would_refuse() {
    let cases: &[(&[&str], &str)] = &[
        (&["--policy", "evict-oldest"], "policy must be reject_new, evict_oldest or reject_new_device"),
        (&["--limit", "0"], "limit must be an integer 1-1000"),
        (&["--limit", "1001"], "limit must be an integer 1-1000"),
        (&["--policy", "reject_new_device"], "policy reject_new_device needs a device"),
        (&["--user", "al!ce"], "sub (the user id) must be 1-128 characters"),
        (&["--group", "studio", "--group-limit", "0"], "group_limit must be an integer 1-1000"),
        (&["--group", "a b", "--group-limit", "1"], "group must be 1-64 characters"),
        (&["--label", &"x".repeat(65)], "label is longer than 64 bytes"),
        (&["--valid-secs=-3600"], "grant has expired"),
        (&["--kid", "k9"], "unknown key id"),
        (&["--count", "3", "--user", "al!ce"], "sub (the user id)"),
    ];
    for (flags, why) in cases {
        let args: Vec<&str> = ["mint"].iter().chain(flags.iter()).copied().collect();
        let err = fails(&args, &[]);
        assert!(err.contains(&format!("the server would refuse this grant: {why}")), "{args:?}: {err}");
    }
    // The edge values are accepted.
    for limit in ["1", "1000"] {
        assert!(run(&["mint", "--limit", limit]).starts_with("g1."));
    }
    run(&["mint", "--policy", "reject_new_device", "--device", "tv-1"]);

    // With --config, the tenant's own default policy applies.
    let dir = TempDir::new("mint-rules");
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"reject_new\"", "\"reject_new_device\"");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    let err = fails(&["mint", "--config", &path, "--tenant", "acme"], &[]);
    assert!(err.contains("policy reject_new_device needs a device"), "{err}");
    run(&["mint", "--config", &path, "--tenant", "acme", "--device", "tv-1"]);
    let err = fails(&["mint", "--config", &path, "--tenant", "other"], &[]);
    assert!(err.contains("tenant \"other\" is not in"), "{err}");
}

#[test]
fn mint_help_explains_every_grant_field() {
    let help = run(&["mint", "--help"]);
    for flag in
        ["--limit <LIMIT>", "--group <GROUP>", "--group-limit <GROUP_LIMIT>", "--label <LABEL>", "--content <CONTENT>"]
    {
        let line = help.lines().find(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| panic!("{flag}: {help}"));
        let text = line.trim_start()[flag.len()..].split("[default:").next().unwrap().trim();
        assert!(!text.is_empty(), "{flag} has no help: {line:?}");
    }
}

/// This process's open-files limits, soft and hard (`/proc/<pid>/limits`).
#[cfg(target_os = "linux")]
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let v: Vec<u64> = line.split_whitespace().skip(3).take(2).map(|v| v.parse().unwrap_or(u64::MAX)).collect();
    (v[0], v[1])
}

/// `streamcap serve <args>` started by `sh` after `ulimit -S -n <soft>`;
/// returns the child and its log up to the "listening on" line.
#[cfg(target_os = "linux")]
fn serve_with_soft_limit(soft: u64, args: &[&str]) -> (Child, String) {
    let script = format!("ulimit -S -n {soft} && exec \"$0\" serve \"$@\"");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg(env!("CARGO_BIN_EXE_streamcap")).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("STREAMCAP_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn sh");
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.expect("read the server's log");
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening on") {
            return (child, log);
        }
    }
    let _ = child.wait();
    panic!("streamcap serve {args:?} did not start:\n{log}");
}

/// The server raises its soft open-files limit to the hard one, and says
/// nothing of the limit when that holds max_connections; when even the hard
/// limit cannot, a configured server warns with what to do (a dev server
/// says the same at info level).
#[cfg(target_os = "linux")]
#[test]
fn open_files_limit_is_raised_and_reported_only_when_short() {
    let (_, hard) = open_files_limits("self");
    let local = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    if hard > 512 {
        let mut args = local.to_vec();
        args.extend(["--max-connections", "100"]);
        let (mut child, log) = serve_with_soft_limit(256, &args);
        let limits = open_files_limits(&child.id().to_string());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(limits, (hard, hard), "the soft limit was not raised");
        assert!(!log.contains("open-files limit"), "{log}");
    }

    let too_many = (hard.min(1 << 40) + 1000).to_string();
    let need = format!("{}", hard.min(1 << 40) + 1064);
    let dir = TempDir::new("nofile");
    let path = dir.path("streamcap.toml");
    write_config(&path, &[("s1", KEY_S1)], &[("k1", KEY_K1)], "");
    let path = path.display().to_string();
    for (config, level) in [(vec!["--config", path.as_str()], "WARN"), (vec![], "INFO")] {
        let mut args = local.to_vec();
        args.extend(config);
        args.extend(["--max-connections", too_many.as_str()]);
        let (mut child, log) = serve_with_soft_limit(hard, &args);
        child.kill().unwrap();
        child.wait().unwrap();
        let line = log.lines().find(|l| l.contains("open-files limit")).unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains(level), "{line}");
        assert!(line.contains(&format!("ulimit -n {need}")) && line.contains(&format!("LimitNOFILE={need}")), "{line}");
    }
}
