//! Two sidecar processes sharing one Redis (`state.backend.redis`): a replay sent to the
//! other replica is refused, a peer's rate is the fleet's, and while Redis is down replay
//! protected routes fail closed and recover without a restart.
//!
//! Needs `redis-server` (`.ci/install-state-deps`); under `CI=true` a missing one fails.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A redis-server of the test's own on an ephemeral loopback port.
struct Redis {
    child: Child,
    port: u16,
    dir: Option<tempfile::TempDir>,
}

fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("redis-server is missing; `bash .ci/install-state-deps` installs it");
    }
    if !found {
        eprintln!("SKIPPED: redis-server is missing; `bash .ci/install-state-deps` installs it. Under CI=true this is a failure.");
    }
    found
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = port::unclaimed();
        Redis::start_on(port, dir)
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() {
                    assert_eq!(&buf, b"+PONG\r\n");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            dir: Some(dir),
        }
    }

    /// Stops the server (SIGKILL: an outage, not a shutdown) and gives back what restarts it.
    fn stop(mut self) -> (u16, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self
            .dir
            .take()
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        (self.port, dir)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sidecar process.
struct Replica {
    child: Child,
    addr: SocketAddr,
    _state: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(redis_port: u16, app: SocketAddr) -> Replica {
    let state = tempfile::tempdir().unwrap();
    let config = replica_config(state.path(), redis_port, app);
    let (child, addr) = spawn_sidecar(&config);
    Replica {
        child,
        addr,
        _state: state,
    }
}

/// A replica's config in `dir`: one Redis shared by two replicas, a replay-protected
/// route and one with `fresh: off`.
fn replica_config(dir: &std::path::Path, redis_port: u16, app: SocketAddr) -> std::path::PathBuf {
    let config = dir.join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
admin: {{ listen: "off" }}
state:
  dir: {dir}
  backend: {{ redis: "redis://127.0.0.1:{redis_port}/0", replicas: 2, on_redis_down: local, redis_timeout: 300ms }}
limits:
  per_ip_rate: {{ per_second: 10000, burst: 10000 }}
peers:
  bsk:
    agid: BSK
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
    rate: {{ per_second: 1, burst: 20 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /bsk/landing, from: bsk, envelope: [form, aes], ip_check: false, upstream: "http://{app}/landing" }}
      - {{ path: /bsk/open, from: bsk, envelope: [form, aes], ip_check: false, fresh: off, upstream: "http://{app}/open" }}
"#,
            dir = dir.display(),
        ),
    )
    .unwrap();
    config
}

/// A landing body with a ticket of its own (a distinct millisecond per `n`).
fn landing_body(n: i64) -> Vec<u8> {
    let ticket = bsk_sidecar::calendar::unix_ms_to_ticket(unix_now() * 1000 - 1000 - n);
    let plain = format!(r#"{{"userid":"8527419636","ticketNo":"{ticket}"}}"#);
    form_body("BSK", &aes_b64(SPEC_KEY, SPEC_IV, plain.as_bytes()))
}

async fn post_to(r: &Replica, path: &str, body: &[u8]) -> Answer {
    send(
        r.addr,
        post(
            r.addr,
            path,
            Some("application/x-www-form-urlencoded"),
            body.to_vec(),
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_replay_protection_and_the_peers_rate() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let app = Upstream::start(Behaviour::Echo).await;
    let (a, b) = (replica(redis.port, app.addr), replica(redis.port, app.addr));

    // A body accepted by A is a replay at B.
    let body = landing_body(0);
    assert_eq!(post_to(&a, "/bsk/landing", &body).await.status, 200);
    post_to(&b, "/bsk/landing", &body)
        .await
        .assert_error(409, "replayed");
    assert_eq!(app.count(), 1);

    // The peer's burst of 20 is the fleet's: 40 requests alternating between A and B
    // admit about 20 in all (plus what 1/s refills while they run), not 20 each.
    let mut admitted = [0u32; 2];
    for n in 1..=40 {
        let r = if n % 2 == 0 { &a } else { &b };
        let answer = post_to(r, "/bsk/landing", &landing_body(n)).await;
        match answer.status.as_u16() {
            200 => admitted[(n % 2) as usize] += 1,
            429 => {
                answer.assert_error(429, "rate_limited_peer");
            }
            other => panic!("unexpected {other}: {}", answer.text()),
        }
    }
    let total = admitted[0] + admitted[1];
    // The accepted body and the refused replay (authenticated, so charged) took 2 of the
    // 20; the rest, plus what 1/s refills while this runs, is the fleet's, not 20 each.
    assert!((18..=21).contains(&total), "admitted {admitted:?}");
    assert!(admitted[0] > 0 && admitted[1] > 0, "{admitted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_replay_closed_and_recovers_without_a_restart() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let app = Upstream::start(Behaviour::Echo).await;
    let a = replica(redis.port, app.addr);
    assert_eq!(
        post_to(&a, "/bsk/landing", &landing_body(100)).await.status,
        200
    );

    let (port, dir) = redis.stop();
    // Replay-protected: refused, never forwarded unprotected.
    post_to(&a, "/bsk/landing", &landing_body(101))
        .await
        .assert_error(503, "replay_store_unavailable");
    // A route without replay protection keeps working on the local share of the rate.
    let open = post_to(&a, "/bsk/open", &landing_body(102)).await;
    assert_eq!(open.status, 200, "{}", open.text());
    assert_eq!(app.count(), 2);

    // Redis back on the same address: protection resumes (after the one-second backoff).
    let _redis = Redis::start_on(port, dir);
    let body = landing_body(103);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = post_to(&a, "/bsk/landing", &body).await;
        match answer.status.as_u16() {
            200 => break,
            // Until the backoff ends, replay still fails closed, and each try spends the
            // local fallback's share of the peer's rate.
            503 => assert_eq!(answer.json()["reason"], "replay_store_unavailable"),
            429 => assert_eq!(answer.json()["reason"], "rate_limited_peer"),
            other => panic!("unexpected {other}: {}", answer.text()),
        }
        assert!(
            Instant::now() < deadline,
            "replay protection did not resume"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    post_to(&a, "/bsk/landing", &body)
        .await
        .assert_error(409, "replayed");
}

/// `check --online` with `state.backend.redis`: one line for Redis, `ok` while it answers
/// (PING, and the rate-limit script loads), `FAIL` and a non-zero exit once it is gone.
#[test]
fn check_online_reaches_the_fleets_redis_and_fails_without_it() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    // An upstream that accepts connections, so Redis is the only thing that can fail.
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = replica_config(state.path(), redis.port, app.local_addr().unwrap());
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_bsk-sidecar"))
            .args(["check", "--online", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let redis_line = |text: &str| {
        text.lines()
            .find(|l| l.contains("state.backend.redis"))
            .unwrap_or_else(|| panic!("no Redis line in:\n{text}"))
            .to_string()
    };

    let (code, text) = check();
    let line = redis_line(&text);
    assert!(
        line.starts_with("ok   state.backend.redis: connected in"),
        "{text}"
    );
    assert!(line.contains("rate-limit script loaded; Redis "), "{line}");
    assert_eq!(code, Some(0), "{text}");

    let _gone = redis.stop();
    let (code, text) = check();
    assert!(
        redis_line(&text).starts_with("FAIL state.backend.redis: "),
        "{text}"
    );
    assert_ne!(code, Some(0), "{text}");
}
