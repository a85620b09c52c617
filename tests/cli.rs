//! The real `bsk-sidecar` binary: `seal` / `open` for integration engineers, `keygen`,
//! `check`, `run` (start, serve, SIGTERM) and `demo`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsk-sidecar");
/// Bound on any one run of the binary; only reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(20);

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for `child` to exit, killing it after [`DEADLINE`].
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bsk-sidecar did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with `args`, feeding `stdin`, bounded by [`DEADLINE`].
fn bsk(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bsk-sidecar");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_bounded(&mut child);
    writer.join().unwrap();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Runs the binary and insists on success; returns stdout.
fn bsk_ok(args: &[&str], stdin: &str) -> String {
    let out = bsk(args, stdin);
    assert!(
        out.status.success(),
        "bsk-sidecar {args:?} failed ({}):\n{}",
        out.status,
        out.stderr
    );
    out.stdout
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cli")
        .join(name)
}

const SPEC_KEYS: [&str; 4] = ["--key", SPEC_KEY, "--iv", SPEC_IV];

#[test]
fn seal_reproduces_the_spec_vector_and_open_reverses_it() {
    let sealed = bsk_ok(&[&["seal"], &SPEC_KEYS[..]].concat(), SPEC_PLAIN);
    assert_eq!(sealed, format!("{SPEC_CIPHER}\n"));
    let opened = bsk_ok(&[&["open"], &SPEC_KEYS[..]].concat(), SPEC_CIPHER);
    assert_eq!(opened, format!("{SPEC_PLAIN}\n"));
}

#[test]
fn form_aes_round_trip_keeps_a_17_digit_ticket_exact() {
    let args = [&["--envelope", "form,aes", "--agid", "BSK"], &SPEC_KEYS[..]].concat();
    let sealed = bsk_ok(&[&["seal"], &args[..]].concat(), TICKET_PLAIN);
    assert!(sealed.starts_with("agId=BSK&encData="), "{sealed}");
    // A correct sender percent-encodes base64's `+`, `/` and `=`.
    let enc = sealed.trim().strip_prefix("agId=BSK&encData=").unwrap();
    assert!(!enc.contains(['+', '/', '=']), "{enc}");
    let opened = bsk_ok(&[&["open"], &args[..]].concat(), &sealed);
    assert_eq!(opened, format!("{TICKET_PLAIN}\n"));
}

#[test]
fn token_jwt_round_trip_carries_passcode_and_token() {
    let args = [
        "--envelope",
        "token,jwt",
        "--jwt-secret",
        JWT_SECRET,
        "--passcode",
        PASSCODE,
    ];
    let sealed = bsk_ok(&[&["seal"], &args[..]].concat(), TICKET_PLAIN);
    let v: serde_json::Value = serde_json::from_str(&sealed).expect("sealed output is JSON");
    assert_eq!(v["passcode"], PASSCODE);
    let token = v["token"].as_str().expect("token");
    assert_eq!(token.split('.').count(), 3, "{token}");
    let opened = bsk_ok(&[&["open"], &args[..]].concat(), &sealed);
    assert_eq!(opened, format!("{TICKET_PLAIN}\n"));

    // As the sidecar itself would: a token without `exp` is refused with --require-exp.
    let strict = bsk(
        &[&["open"], &args[..], &["--require-exp"]].concat(),
        &sealed,
    );
    assert!(!strict.status.success());
    assert!(strict.stderr.contains("missing_exp"), "{}", strict.stderr);
}

#[test]
fn bearer_jwt_round_trip() {
    let args = ["--envelope", "bearer,jwt", "--jwt-secret", JWT_SECRET];
    let sealed = bsk_ok(&[&["seal"], &args[..]].concat(), TICKET_PLAIN);
    assert!(sealed.starts_with("Authorization: Bearer "), "{sealed}");
    let opened = bsk_ok(&[&["open"], &args[..]].concat(), &sealed);
    assert_eq!(opened, format!("{TICKET_PLAIN}\n"));
}

/// What `seal --envelope bearer,jwt --passcode P` prints must open with the same arguments.
#[test]
fn bearer_jwt_round_trip_with_passcode() {
    let args = [
        "--envelope",
        "bearer,jwt",
        "--jwt-secret",
        JWT_SECRET,
        "--passcode",
        PASSCODE,
    ];
    let sealed = bsk_ok(&[&["seal"], &args[..]].concat(), TICKET_PLAIN);
    assert!(sealed.starts_with("Authorization: Bearer "), "{sealed}");
    assert!(
        sealed.contains(&format!(r#"{{"passcode":"{PASSCODE}"}}"#)),
        "{sealed}"
    );
    let opened = bsk_ok(&[&["open"], &args[..]].concat(), &sealed);
    assert_eq!(opened, format!("{TICKET_PLAIN}\n"));
}

#[test]
fn open_with_the_wrong_key_fails_with_one_line_on_stderr() {
    let out = bsk(
        &[
            "open",
            "--key",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
            "--iv",
            SPEC_IV,
        ],
        SPEC_CIPHER,
    );
    assert!(!out.status.success());
    assert_eq!(out.stdout, "", "nothing printed as plaintext");
    let err = out.stderr.trim_end();
    assert!(!err.is_empty());
    assert!(!err.contains('\n'), "more than one line: {err}");
    assert!(err.starts_with("error:"), "{err}");
}

#[test]
fn seal_and_open_take_keys_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("peers.yaml");
    std::fs::write(
        &config,
        r#"
admin: { listen: "off" }
peers:
  dept:
    agid: DEPT
    passcode: "445566"
    jwt: { secret: "config-file-jwt-secret-0123456789ab" }
    aes:
      keys:
        - { key: "K0K1K2K3K4K5K6K7K8K9KAKBKCKDKEKF", iv: "IVIVIVIVIVIVIVIV" }
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /x, from: dept, envelope: [form, aes], ip_check: false, upstream: "http://127.0.0.1:9/x" }
"#,
    )
    .unwrap();
    let from_config = ["--config", config.to_str().unwrap(), "--peer", "dept"];
    let sealed = bsk_ok(
        &[&["seal", "--envelope", "form,aes"], &from_config[..]].concat(),
        TICKET_PLAIN,
    );
    // The peer's own agId and key came from the file.
    assert!(sealed.starts_with("agId=DEPT&encData="), "{sealed}");
    let explicit = [
        "--envelope",
        "form,aes",
        "--agid",
        "DEPT",
        "--key",
        "K0K1K2K3K4K5K6K7K8K9KAKBKCKDKEKF",
        "--iv",
        "IVIVIVIVIVIVIVIV",
    ];
    let opened = bsk_ok(&[&["open"], &explicit[..]].concat(), &sealed);
    assert_eq!(opened, format!("{TICKET_PLAIN}\n"));

    // Passcode and JWT secret too.
    let sealed = bsk_ok(
        &[&["seal", "--envelope", "token,jwt"], &from_config[..]].concat(),
        TICKET_PLAIN,
    );
    let v: serde_json::Value = serde_json::from_str(&sealed).unwrap();
    assert_eq!(v["passcode"], "445566");
    let opened = bsk_ok(
        &[
            "open",
            "--envelope",
            "token,jwt",
            "--passcode",
            "445566",
            "--jwt-secret",
            "config-file-jwt-secret-0123456789ab",
        ],
        &sealed,
    );
    assert_eq!(opened, format!("{TICKET_PLAIN}\n"));

    let missing = bsk(
        &[
            "seal",
            "--config",
            config.to_str().unwrap(),
            "--peer",
            "nobody",
        ],
        TICKET_PLAIN,
    );
    assert!(!missing.status.success());
    assert!(missing.stderr.contains("nobody"), "{}", missing.stderr);
}

/// `name: value` lines of `keygen`.
fn keygen() -> Vec<(String, String)> {
    bsk_ok(&["keygen"], "")
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn keygen_prints_fresh_usable_material() {
    let first = keygen();
    let names: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["aes_key", "aes_iv", "jwt_secret", "passcode"]);
    let get = |set: &[(String, String)], name: &str| {
        set.iter().find(|(k, _)| k == name).unwrap().1.clone()
    };
    let key = get(&first, "aes_key");
    let iv = get(&first, "aes_iv");
    assert_eq!(key.len(), 32, "{key}");
    assert_eq!(iv.len(), 16, "{iv}");
    assert!(get(&first, "jwt_secret").len() >= 32);
    assert!(!get(&first, "passcode").is_empty());
    for (name, value) in &first {
        assert!(
            value.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{name}: {value}"
        );
    }

    let second = keygen();
    for name in ["aes_key", "aes_iv", "jwt_secret", "passcode"] {
        assert_ne!(get(&first, name), get(&second, name), "{name} repeated");
    }

    // The key and IV work as a peer would use them.
    let sealed = bsk_ok(&["seal", "--key", &key, "--iv", &iv], TICKET_PLAIN);
    assert_eq!(sealed.trim(), aes_b64(&key, &iv, TICKET_PLAIN.as_bytes()));
}

#[test]
fn check_accepts_a_good_config_and_prints_its_routes() {
    let out = bsk(
        &["check", "--config", fixture("good.yaml").to_str().unwrap()],
        "",
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("POST /bsk/landing") && l.contains("[form,aes]")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("POST /bsk/status") && l.contains("[token,jwt]")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.trim_end().ends_with("OK"), "{}", out.stdout);
}

#[test]
fn check_lists_every_mistake_with_its_field_path_and_exits_64() {
    let path = fixture("bad.yaml");
    let out = bsk(&["check", "--config", path.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    for field in [
        "limits.max_in_flight",
        "peers.broken.aes.keys[0].key",
        "listeners[0].listen",
        "listeners[0].routes[0].path",
        "listeners[0].routes[0].envelope[1]",
        "listeners[0].routes[0].upstream",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains("bad.yaml") && l.contains(&format!(": {field}: "))),
            "no line for {field}:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("6 problem(s)"), "{}", out.stderr);
    assert_eq!(out.stdout, "", "nothing described for a refused config");

    let out = bsk(
        &[
            "check",
            "--config",
            fixture("unknown_key.yaml").to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("unknown_key.yaml:15: listeners[0].routes[0].ip_chek:"),
        "{}",
        out.stderr
    );
}

/// `text` without ANSI colour sequences (ESC `[` ... letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `bsk-sidecar run` in the background, its public address read from its log.
struct Running {
    child: Child,
    addr: std::net::SocketAddr,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

impl Running {
    /// Starts `run --config config` and waits (bounded) for the `listening` log line of
    /// the `public` listener, in the human log format: `... listening listener=public
    /// addr=127.0.0.1:PORT`.
    fn start(config: &Path) -> Running {
        let mut child = Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bsk-sidecar run");
        let (tx, lines) = mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        // Keeps reading to the end so the child never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(strip_ansi(&line));
            }
        });
        let until = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        let addr = loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "no `listening` line in time; stderr so far:\n{}",
                    seen.join("\n")
                );
            };
            let found = (line.contains(" listening ") && line.contains("listener=public"))
                .then(|| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                })
                .flatten()
                .map(|a| a.parse().expect("addr=host:port"));
            seen.push(line);
            if let Some(a) = found {
                break a;
            }
        };
        Running {
            child,
            addr,
            lines,
            reader,
        }
    }

    /// Sends SIGTERM, waits (bounded) for the exit; returns the status and the log lines
    /// written after startup.
    fn terminate(self) -> (ExitStatus, Vec<String>) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success());
        self.wait()
    }

    /// Waits (bounded) for the exit; returns the status and the remaining log lines.
    fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let status = wait_bounded(&mut self.child);
        self.reader.join().unwrap();
        (status, self.lines.try_iter().collect())
    }
}

/// A config for `run`: one `[form, aes]` route in front of `app`, state in `dir`.
fn run_config(dir: &Path, app: std::net::SocketAddr) -> PathBuf {
    let config = dir.join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
admin: {{ listen: 127.0.0.1:0 }}
state: {{ dir: {state} }}
peers:
  bsk:
    agid: BSK
    aes:
      keys:
        - {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /bsk/landing, from: bsk, envelope: [form, aes], ip_check: false, upstream: "http://{app}/landing" }}
"#,
            state = dir.display(),
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_sealed_requests_and_exits_cleanly_on_sigterm() {
    let app = Upstream::start(Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let config = run_config(dir.path(), app.addr);
    let running = Running::start(&config);
    let addr = running.addr;
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // The shipped default protects the route: a fresh ticket passes once, then is a replay.
    let plain = format!(
        r#"{{"userid":8527419636,"ticketNo":{},"name":"Anupam Ghosh"}}"#,
        bsk_sidecar::calendar::unix_ms_to_ticket(unix_now() * 1000)
    );
    let body = form_body("BSK", &aes_b64(SPEC_KEY, SPEC_IV, plain.as_bytes()));
    let landing = || {
        post(
            addr,
            "/bsk/landing",
            Some("application/x-www-form-urlencoded"),
            body.clone(),
        )
    };
    let answer = send(addr, landing()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(app.only().body.as_ref(), plain.as_bytes());
    send(addr, landing()).await.assert_error(409, "replayed");
    assert_eq!(app.count(), 1, "the replay reached the application");

    let (status, rest) = running.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(
        rest.iter().any(|l| l.contains("drained")),
        "no drain logged after SIGTERM:\n{}",
        rest.join("\n")
    );
}

/// A stop right after start (systemd `restart` during boot, an orchestrator scaling
/// down) must drain and exit 0 like any other, not die of the default SIGTERM action.
#[test]
fn sigterm_right_after_startup_still_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = run_config(dir.path(), "127.0.0.1:9".parse().unwrap());
    // Repeated, with a shell already waiting to send the signal the moment the sidecar
    // says it is listening: the window that matters is short.
    for attempt in 0..40 {
        let mut killer = Command::new("sh")
            .args(["-c", r#"read pid && kill -TERM "$pid""#])
            .stdin(Stdio::piped())
            .spawn()
            .expect("start sh");
        let running = Running::start(&config);
        let mut to_killer = killer.stdin.take().unwrap();
        writeln!(to_killer, "{}", running.child.id()).unwrap();
        drop(to_killer);
        assert!(wait_bounded(&mut killer).success(), "kill failed");
        let (status, _) = running.wait();
        assert!(
            status.success(),
            "attempt {attempt}: exit after SIGTERM: {status}"
        );
    }
}

#[test]
fn demo_once_shows_plain_json_reaching_the_app_and_a_tampered_request_refused() {
    let out = bsk(&["demo", "--once", "--listen", "127.0.0.1:0"], "");
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let received: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("app received"))
        .collect();
    assert!(!received.is_empty(), "{}", out.stdout);
    // What the app saw is plain JSON, never a ciphertext.
    for line in &received {
        let json = &line[line.find(": {").expect("a JSON body") + 2..];
        serde_json::from_str::<serde_json::Value>(json)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(
        received.iter().any(|l| l.contains(r#""ticketNo":"#)),
        "{}",
        out.stdout
    );
    assert!(
        !received.iter().any(|l| l.contains("encData")),
        "{}",
        out.stdout
    );
    let tampered = out
        .stdout
        .split("tampered")
        .nth(1)
        .expect("the tampered request is shown");
    assert!(
        tampered.contains("400") && tampered.contains("bad_envelope"),
        "{}",
        out.stdout
    );
}

#[test]
fn man_pages_and_completions_come_from_the_command_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    bsk_ok(&["generate-docs", "--out", out], "");
    let man = std::fs::read_to_string(dir.path().join("man/bsk-sidecar.1")).unwrap();
    assert!(man.contains(".TH bsk-sidecar 1"), "{man}");
    // Every visible subcommand has its page and is named on the main one; the
    // generator's own hidden subcommand and clap's `help` have none.
    for sub in ["run", "check", "seal", "open", "keygen", "outbox", "demo"] {
        assert!(
            man.contains(&format!("bsk\\-sidecar\\-{sub}(1)")),
            "{sub} not on bsk-sidecar.1"
        );
        assert!(
            dir.path()
                .join(format!("man/bsk-sidecar-{sub}.1"))
                .is_file(),
            "{sub}"
        );
    }
    assert!(
        !man.contains("generate"),
        "hidden subcommand on the man page"
    );
    assert!(!dir.path().join("man/bsk-sidecar-help.1").exists());
    let check = std::fs::read_to_string(dir.path().join("man/bsk-sidecar-check.1")).unwrap();
    assert!(check.contains("\\-\\-config"), "{check}");

    for file in ["bsk-sidecar.bash", "_bsk-sidecar", "bsk-sidecar.fish"] {
        let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
        assert!(text.contains("keygen") && text.contains("outbox"), "{file}");
        assert!(
            !text.contains("generate-docs"),
            "{file} offers the hidden subcommand"
        );
    }
    // The bash script loads and registers itself.
    let bash = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {out}/completions/bsk-sidecar.bash && complete -p bsk-sidecar"
        ))
        .output()
        .unwrap();
    assert!(
        bash.status.success(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    assert!(String::from_utf8_lossy(&bash.stdout).contains("bsk-sidecar"));
}

/// The binary runs on jemalloc (the default feature) whatever else is built with it: the
/// allocator is the binary's own, so `--features bench-tools` (the load-test tools) does
/// not swap it for the system's. jemalloc prints its statistics at exit when asked.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[test]
fn the_binary_allocates_with_jemalloc() {
    let mut child = Command::new(BIN)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bsk-sidecar");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(wait_bounded(&mut child).success());
    assert!(
        stderr.contains("jemalloc statistics"),
        "no jemalloc statistics at exit: {stderr:.300}"
    );
}
