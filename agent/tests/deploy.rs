//! The systemd unit shipped in `deploy/`: unprivileged and sandboxed as the
//! operator is promised, and accepted by `systemd-analyze verify` where that
//! tool is installed.

use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/aymc-agent.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The unit's `Key=value` lines (comments left out).
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn the_systemd_unit_is_unprivileged_sandboxed_and_verifies() {
    let text = unit_text();
    let set = settings(&text);
    let get = |key: &str| set.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    for (key, want) in [
        ("User", "aymc-agent"),
        ("StateDirectory", "aymc-agent"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(key), [want], "{key}");
    }
    assert!(get("ExecStart")[0].contains("aymc-agent --config "), "{:?}", get("ExecStart"));
    assert!(get("ProtectProc").is_empty(), "ProtectProc=invisible would hide the servers' processes");
    assert!(text.contains("# ReadOnlyPaths="), "the commented ReadOnlyPaths example");
    // systemd-analyze checks the unit for real, when it is installed.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("aymc-agent.service");
    // Its ExecStart must exist: point it at the binary just built.
    std::fs::write(&copy, text.replace("/usr/local/bin/aymc-agent", env!("CARGO_BIN_EXE_aymc-agent"))).unwrap();
    match Command::new("systemd-analyze").arg("verify").arg(&copy).output() {
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
        }
        Err(e) => eprintln!("systemd-analyze not run ({e}); only the unit's settings were checked"),
    }
}
