//! What an operator installs: the systemd units in `deploy/` (the settings
//! the issue asks for, `systemd-analyze verify`, and the `systemd-analyze
//! security` exposure the units and the README quote), the shipped
//! configuration files, and `scripts/install` into a scratch prefix. The
//! `.deb` files are checked by `scripts/check-debs` (run by
//! `scripts/package` and `scripts/test`); the notify protocol the hub's
//! `Type=notify` unit relies on by `ops`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::end_to_end::{agent_bin, spawn_agent};
use crate::support::*;

/// The repository root.
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A unit's `Key=value` settings, comments and section headers left out.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(set: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    set.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// `systemd-analyze ARGS`, or `None` (and a line saying so) when the tool
/// is not installed.
fn systemd_analyze(args: &[&str]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("SKIPPED systemd-analyze {}: not run ({e}); install systemd to check the units", args.join(" "));
            None
        }
    }
}

/// `systemd-analyze verify` passes on `unit` and prints nothing.
fn assert_verifies(unit: &Path) {
    let Some(out) = systemd_analyze(&["verify", unit.to_str().unwrap()]) else { return };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify {}: {stderr}", unit.display());
}

/// The "Overall exposure level" `systemd-analyze security --offline=true`
/// gives `unit`, as printed (`"1.1"`).
fn exposure(unit: &Path) -> Option<String> {
    let out = systemd_analyze(&["security", "--offline=true", "--no-pager", unit.to_str().unwrap()])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let figure = line.split(": ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{line}"));
    Some(figure.to_string())
}

/// A copy of `deploy/NAME.service` in `dir` whose `ExecStart` runs the
/// binary just built (verify wants it to exist).
fn unit_copy(dir: &tempfile::TempDir, name: &str, binary: &Path) -> PathBuf {
    let text = read(&repo().join("deploy").join(format!("{name}.service")));
    write_file(dir, &format!("{name}.service"), &text.replace(&format!("/usr/bin/{name}"), binary.to_str().unwrap()))
}

#[test]
fn the_hub_unit_is_a_sandboxed_notify_service() {
    let text = read(&repo().join("deploy/aymc-hub.service"));
    let set = settings(&text);
    for (key, want) in [
        ("Type", "notify"),
        ("ExecStart", "/usr/bin/aymc-hub serve --config /etc/aymc/hub.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("User", "aymc"),
        ("StateDirectory", "aymc"),
        ("LoadCredential", "jwt_secret:/etc/aymc/jwt_secret"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallFilter", "@system-service"),
    ] {
        assert!(values(&set, key).contains(&want), "{key}={want}: {:?}", values(&set, key));
    }
    for key in ["WatchdogSec", "MemoryMax", "LimitNOFILE"] {
        assert_eq!(values(&set, key).len(), 1, "{key}");
    }
    assert!(values(&set, "Environment").iter().all(|e| !e.contains("SECRET")), "no secret in the environment");
    // History is on by default, in the StateDirectory.
    let config = read(&repo().join("deploy/hub.toml"));
    assert!(config.contains("\ndb_path = \"/var/lib/aymc/history.db\""), "{config}");
    assert!(!config.lines().any(|l| l.starts_with("jwt_secret")), "no secret in the shipped config");
}

#[test]
fn the_agent_unit_can_only_read() {
    let text = read(&repo().join("deploy/aymc-agent.service"));
    let set = settings(&text);
    for (key, want) in [
        ("ExecStart", "/usr/bin/aymc-agent --config /etc/aymc/agent.toml"),
        ("User", "aymc-agent"),
        ("StateDirectory", "aymc-agent"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(values(&set, key), [want], "{key}");
    }
    assert_eq!(values(&set, "MemoryMax").len(), 1);
    assert!(values(&set, "ProtectProc").is_empty(), "ProtectProc=invisible would hide the servers' processes");
    assert!(values(&set, "ExecReload").is_empty(), "the agent does not reload");
    assert!(text.contains("# ReadOnlyPaths="), "the commented ReadOnlyPaths example");
}

#[test]
fn units_verify_and_the_quoted_exposure_is_measured() {
    let dir = temp_dir();
    let readme = read(&repo().join("README.md"));
    for (name, binary) in [("aymc-hub", PathBuf::from(bin())), ("aymc-agent", agent_bin())] {
        let unit = unit_copy(&dir, name, &binary);
        assert_verifies(&unit);
        let Some(figure) = exposure(&unit) else { return };
        let value: f64 = figure.parse().unwrap_or_else(|e| panic!("{name}: {figure}: {e}"));
        assert!(value <= 2.0, "{name}: exposure {figure}, above 2.0");
        // The figure each unit's comment (and the README, for the hub) quotes.
        let quoted = format!("rates this unit {figure} (OK)");
        assert!(read(&unit).contains(&quoted), "{name}.service should say `{quoted}`");
        if name == "aymc-hub" {
            assert!(readme.contains(&format!("exposure **{figure}**")), "README should quote exposure **{figure}**");
        }
    }
}

#[test]
fn the_shipped_configs_are_valid() {
    let creds = temp_dir();
    write_file(&creds, "jwt_secret", "a-credential-secret\n");
    let hub = repo().join("deploy/hub.toml");
    let out = run_cli(
        &["check-config", "--config", hub.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())],
    );
    assert_eq!((out.code, out.stdout.trim()), (Some(0), "config ok: listening on 127.0.0.1:8080"), "{out:?}");
    // Without the credential the hub has no key: the secret is not in the file.
    assert_eq!(run_cli(&["check-config", "--config", hub.to_str().unwrap()], &[]).code, Some(2));
    // The agent's file, on another port, runs (with no servers yet).
    let dir = temp_dir();
    let text = read(&repo().join("deploy/agent.toml"));
    assert!(text.contains("\nlisten = \"127.0.0.1:50051\"\n"));
    let copy = write_file(&dir, "agent.toml", &text.replace("127.0.0.1:50051", "127.0.0.1:0"));
    let (_agent, addr) = spawn_agent(&copy);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
}

/// `bash scripts/install ARGS --from <the binaries under test>`.
fn install(args: &[&str]) -> Output {
    let from = Path::new(bin()).parent().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/install"))
        .args(args)
        .arg("--from")
        .arg(from)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/install {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn scripts_install_into_a_prefix_keeps_an_edited_config() {
    let root = temp_dir();
    let prefix = root.path().join("opt");
    let p = prefix.to_str().unwrap();
    // --dry-run says what it would do and writes nothing.
    let dry = String::from_utf8_lossy(&install(&["--prefix", p, "--no-users", "--dry-run"]).stdout).into_owned();
    assert!(dry.contains(&format!("{p}/bin/aymc-hub")) && dry.contains("jwt_secret"), "{dry}");
    assert!(!prefix.exists(), "--dry-run created {p}");

    let first = String::from_utf8_lossy(&install(&["--prefix", p, "--no-users"]).stdout).into_owned();
    assert!(first.contains("Next:") && first.contains("systemctl link"), "the next step: {first}");
    let conf = prefix.join("etc/aymc");
    for bin in ["aymc-hub", "aymc-agent"] {
        let out = Command::new(prefix.join("bin").join(bin)).arg("--help").output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("usage"), "{bin} --help");
        let unit = read(&prefix.join("lib/systemd/system").join(format!("{bin}.service")));
        assert!(unit.contains(&format!("ExecStart={p}/bin/{bin} ")), "{unit}");
        let outside = unit.replace(&format!("{p}/etc/aymc/"), "");
        assert!(!outside.contains("/usr/bin/") && !outside.contains("/etc/aymc/"), "every path rewritten: {unit}");
        assert_verifies(&prefix.join("lib/systemd/system").join(format!("{bin}.service")));
    }
    let unit = read(&prefix.join("lib/systemd/system/aymc-hub.service"));
    assert!(unit.contains(&format!("LoadCredential=jwt_secret:{}/jwt_secret", conf.display())), "{unit}");
    // The installed config with the installed secret, as the unit hands it over.
    let out = run_cli(
        &["check-config", "--config", conf.join("hub.toml").to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", conf.to_str().unwrap())],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(conf.join("jwt_secret")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = read(&conf.join("jwt_secret"));
    assert!(secret.trim().len() >= 40, "32 random bytes in base64: {secret}");

    // An operator edits the config; a second install keeps it and the secret.
    let edited = read(&conf.join("hub.toml")).replace("127.0.0.1:8080", "127.0.0.1:9090");
    std::fs::write(conf.join("hub.toml"), &edited).unwrap();
    let second = String::from_utf8_lossy(&install(&["--prefix", p, "--no-users"]).stdout).into_owned();
    assert!(second.contains("kept") && second.contains("hub.toml"), "{second}");
    assert_eq!(read(&conf.join("hub.toml")), edited);
    assert_eq!(read(&conf.join("jwt_secret")), secret);

    // --uninstall takes the binaries, units and docs, and keeps the config
    // (--dry-run: nothing yet).
    install(&["--prefix", p, "--no-users", "--uninstall", "--dry-run"]);
    assert!(prefix.join("bin/aymc-hub").exists(), "--dry-run removed the binary");
    let gone = String::from_utf8_lossy(&install(&["--prefix", p, "--no-users", "--uninstall"]).stdout).into_owned();
    assert!(gone.contains("kept"), "{gone}");
    for path in ["bin/aymc-hub", "bin/aymc-agent", "lib/systemd/system/aymc-hub.service", "share/doc/aymc-hub"] {
        assert!(!prefix.join(path).exists(), "{path} left behind");
    }
    assert_eq!(read(&conf.join("hub.toml")), edited);
}
