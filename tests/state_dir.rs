//! The state directory is private whatever the umask: the real binary, started under
//! `umask 022` in its own process (umask is process-wide), must create the directory
//! 0700 and `replay.log` / `outbox.redb` 0600; `check` warns about a wider directory.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bsk-sidecar");

/// A replay-protected ingress route (replay.log) and a queued egress route (outbox.redb).
fn write_config(dir: &Path, state: &Path) -> std::path::PathBuf {
    let config = format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: "{state}" }}
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: {{ secret: "state-dir-test-jwt-secret-0123456789" }}
    url: https://127.0.0.1:9
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /bsk/landing, from: bsk, envelope: [token, jwt], ip_check: false, fresh: 10m, upstream: "http://127.0.0.1:9/x" }}
  - name: egress
    listen: 127.0.0.1:0
    routes:
      - {{ path: /push, to: bsk, remote: /push, envelope: [token, jwt], delivery: queued }}
"#,
        state = state.display()
    );
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn state_dir_and_files_are_private_under_umask_022() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let config = write_config(tmp.path(), &state);
    let mut child = Command::new("sh")
        .args([
            "-c",
            r#"umask 022; exec "$0" --log-format json run --config "$1""#,
            BIN,
        ])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Serving means the replay cache and the outbox are open.
    let mut log = Vec::new();
    let serving = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(r#""listening""#) => break true,
            Ok(line) => log.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "sidecar did not start:\n{}", log.join("\n"));

    // Compared as octal text, so a failure reads `755` rather than `493`.
    let octal = |p: &Path| format!("{:o}", mode(p));
    assert_eq!(octal(&state), "700", "state directory");
    assert_eq!(octal(&state.join("replay.log")), "600", "replay.log");
    assert_eq!(octal(&state.join("outbox.redb")), "600", "outbox.redb");
    for entry in std::fs::read_dir(&state).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is readable by others", p.display());
    }

    // `check` is quiet about a private directory and warns about a wider one.
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("warning: state.dir"), "{stdout}");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a warning, not a refusal");
    assert!(
        stdout.contains("warning: state.dir") && stdout.contains("755"),
        "{stdout}"
    );
}
