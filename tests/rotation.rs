//! Rotating a passcode and a JWT secret without a restart, with traffic running: add the
//! new one, reload, the peer switches, reload with the new one first, reload without the
//! old one. Secrets are `file:` secrets, re-read on every reload (what SIGHUP runs).
//! Zero failed requests throughout; afterwards the old value is refused.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bsk_sidecar::metrics::Metrics;
use bsk_sidecar::reload::{self, Live};
use bsk_sidecar::runtime::Runtime;
use bsk_sidecar::server;
use support::*;

const OLD_PASSCODE: &str = "376423";
const NEW_PASSCODE: &str = "918273";
const OLD_JWT: &str = "the-old-jwt-secret-of-at-least-32-bytes";
const NEW_JWT: &str = "the-new-jwt-secret-of-at-least-32-bytes";

/// What the peer currently sends: its passcode, its JWT secret and the `kid` it names.
#[derive(Clone)]
struct PeerSends {
    passcode: &'static str,
    secret: &'static str,
    kid: Option<&'static str>,
}

struct Live_ {
    live: Arc<Live>,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(path: &Path) -> Live_ {
    let settings = bsk_sidecar::config::load(path).unwrap_or_else(|e| panic!("{e:?}"));
    let rt = Runtime::new(settings, Metrics::new()).unwrap();
    let bound = server::bind(&rt).await.unwrap();
    let addr = bound.addr_of(&rt, "public").unwrap();
    let live = Live::new(rt);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_live(live.clone(), bound, async {
        let _ = rx.await;
    }));
    Live_ {
        live,
        addr,
        _stop: tx,
    }
}

/// The config: `passcode` and `jwt.secret` as YAML (a secret or a list of them).
fn write_config(
    dir: &Path,
    upstream: SocketAddr,
    passcode: &str,
    jwt_secret: &str,
) -> std::path::PathBuf {
    let yaml = format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: "{state}" }}
limits: {{ per_ip_rate: {{ per_second: 100000, burst: 100000 }} }}
peers:
  bsk:
    agid: BSK
    passcode: {passcode}
    jwt: {{ secret: {jwt_secret}, require_exp: true, leeway: 30s }}
    allow: [127.0.0.0/8]
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /status, from: bsk, envelope: [token, jwt], upstream: "http://{upstream}/status" }}
"#,
        state = dir.join("state").display()
    );
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    // With a trailing newline, as `echo` writes it.
    std::fs::write(&path, format!("{value}\n")).unwrap();
    format!("{{ file: \"{}\" }}", path.display())
}

fn request(
    to: SocketAddr,
    sends: &PeerSends,
    n: u64,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let claims = with_times(&format!(r#"{{"jti":"rot-{n}","userid":"9054233544"}}"#));
    let header = match sends.kid {
        Some(kid) => format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#),
        None => r#"{"alg":"HS256","typ":"JWT"}"#.to_string(),
    };
    let token = raw_jwt(
        &header,
        claims.as_bytes(),
        sends.secret,
        Some(jsonwebtoken::Algorithm::HS256),
    );
    post(
        to,
        "/status",
        Some("application/json"),
        token_body(sends.passcode, &token),
    )
}

/// Clients sending what `sends` says, as fast as they can, until stopped.
struct Traffic {
    sends: Arc<Mutex<PeerSends>>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(to: SocketAddr, sends: PeerSends) -> Traffic {
        let sends = Arc::new(Mutex::new(sends));
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let tasks = (0..3)
            .map(|_| {
                let (sends, stop, ok, failed, counter) = (
                    sends.clone(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    counter.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let now = sends.lock().unwrap().clone();
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let answer = send(to, request(to, &now, n)).await;
                        if answer.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.lock().unwrap().push(format!(
                                "{} {}",
                                answer.status,
                                answer.text()
                            ));
                        }
                    }
                })
            })
            .collect();
        Traffic {
            sends,
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn switch(&self, to: PeerSends) {
        *self.sends.lock().unwrap() = to;
    }

    /// Waits until `n` more requests have succeeded.
    async fn succeed(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(
                self.failed.lock().unwrap().is_empty(),
                "{:?}",
                self.failed.lock().unwrap()
            );
            assert!(Instant::now() < deadline, "traffic stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passcode_rotates_under_traffic_with_zero_failures() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Echo).await;
    let jwt = secret_file(dir.path(), "jwt", OLD_JWT);
    let old = secret_file(dir.path(), "passcode.old", OLD_PASSCODE);
    let new = secret_file(dir.path(), "passcode.new", NEW_PASSCODE);
    let path = write_config(dir.path(), up.addr, &old, &jwt);
    let sc = start(&path).await;
    let sends_old = PeerSends {
        passcode: OLD_PASSCODE,
        secret: OLD_JWT,
        kid: None,
    };
    let sends_new = PeerSends {
        passcode: NEW_PASSCODE,
        ..sends_old.clone()
    };
    let traffic = Traffic::start(sc.addr, sends_old.clone());
    traffic.succeed(20).await;

    // 1. Add the new one (accepted, not yet used to seal); reload.
    write_config(dir.path(), up.addr, &format!("[{old}, {new}]"), &jwt);
    reload::reload_file(&sc.live, &path).await.unwrap();
    traffic.succeed(20).await;
    // 2. The peer switches.
    traffic.switch(sends_new.clone());
    traffic.succeed(20).await;
    // 3. The new one first; reload. 4. Remove the old one; reload.
    write_config(dir.path(), up.addr, &format!("[{new}, {old}]"), &jwt);
    reload::reload_file(&sc.live, &path).await.unwrap();
    traffic.succeed(20).await;
    write_config(dir.path(), up.addr, &new, &jwt);
    reload::reload_file(&sc.live, &path).await.unwrap();
    traffic.succeed(20).await;

    let (ok, failed) = traffic.finish().await;
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    eprintln!("passcode rotation: {ok} requests, 0 failed");
    // The old passcode is now refused.
    let refused = send(sc.addr, request(sc.addr, &sends_old, 1_000_000)).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_secret_rotates_by_kid_under_traffic_with_zero_failures() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Echo).await;
    let passcode = secret_file(dir.path(), "passcode", OLD_PASSCODE);
    let path_of = |name: &str| dir.path().join(name).display().to_string();
    secret_file(dir.path(), "jwt.2026-06", OLD_JWT);
    secret_file(dir.path(), "jwt.2026-12", NEW_JWT);
    let old = format!(
        "{{ file: \"{}\", kid: \"2026-06\" }}",
        path_of("jwt.2026-06")
    );
    let new = format!(
        "{{ file: \"{}\", kid: \"2026-12\" }}",
        path_of("jwt.2026-12")
    );
    let path = write_config(dir.path(), up.addr, &passcode, &format!("[{old}]"));
    let sc = start(&path).await;
    let sends_old = PeerSends {
        passcode: OLD_PASSCODE,
        secret: OLD_JWT,
        kid: Some("2026-06"),
    };
    let sends_new = PeerSends {
        secret: NEW_JWT,
        kid: Some("2026-12"),
        ..sends_old.clone()
    };
    let traffic = Traffic::start(sc.addr, sends_old.clone());
    traffic.succeed(20).await;

    write_config(dir.path(), up.addr, &passcode, &format!("[{old}, {new}]"));
    reload::reload_file(&sc.live, &path).await.unwrap();
    traffic.succeed(20).await;
    traffic.switch(sends_new.clone());
    traffic.succeed(20).await;
    write_config(dir.path(), up.addr, &passcode, &format!("[{new}, {old}]"));
    reload::reload_file(&sc.live, &path).await.unwrap();
    traffic.succeed(20).await;
    write_config(dir.path(), up.addr, &passcode, &format!("[{new}]"));
    reload::reload_file(&sc.live, &path).await.unwrap();
    traffic.succeed(20).await;

    let (ok, failed) = traffic.finish().await;
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    eprintln!("JWT rotation: {ok} requests, 0 failed");
    let refused = send(sc.addr, request(sc.addr, &sends_old, 1_000_000)).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_file_is_read_again_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Echo).await;
    // The config never changes: `current` and `previous` files are rewritten.
    let jwt = secret_file(dir.path(), "jwt", OLD_JWT);
    let current = secret_file(dir.path(), "passcode.current", OLD_PASSCODE);
    let previous = secret_file(dir.path(), "passcode.previous", "000000");
    let path = write_config(
        dir.path(),
        up.addr,
        &format!("[{current}, {previous}]"),
        &jwt,
    );
    let sc = start(&path).await;
    let sends_old = PeerSends {
        passcode: OLD_PASSCODE,
        secret: OLD_JWT,
        kid: None,
    };
    let sends_new = PeerSends {
        passcode: NEW_PASSCODE,
        ..sends_old.clone()
    };
    let traffic = Traffic::start(sc.addr, sends_old.clone());
    traffic.succeed(20).await;

    secret_file(dir.path(), "passcode.previous", OLD_PASSCODE);
    secret_file(dir.path(), "passcode.current", NEW_PASSCODE);
    reload::reload_file(&sc.live, &path).await.unwrap();
    traffic.succeed(20).await;
    traffic.switch(sends_new);
    traffic.succeed(20).await;
    let (_, failed) = traffic.finish().await;
    assert!(failed.is_empty(), "{failed:?}");

    // Without a reload a rewritten file changes nothing; with one it does.
    secret_file(dir.path(), "passcode.previous", "000000");
    assert_eq!(
        send(sc.addr, request(sc.addr, &sends_old, 2_000_000))
            .await
            .status,
        200
    );
    reload::reload_file(&sc.live, &path).await.unwrap();
    assert_eq!(
        send(sc.addr, request(sc.addr, &sends_old, 2_000_001))
            .await
            .status,
        401
    );
}

#[test]
fn a_kid_on_a_passcode_or_a_repeated_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), "p", OLD_PASSCODE);
    let j = secret_file(dir.path(), "j", OLD_JWT);
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let kid_passcode = format!(
        "[{{ file: \"{}\", kid: \"a\" }}]",
        dir.path().join("p").display()
    );
    let path = write_config(dir.path(), up, &kid_passcode, &j);
    let errs = bsk_sidecar::config::load(&path).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("peers.bsk.passcode[0]") && e.contains("kid")),
        "{text:?}"
    );

    let path = write_config(dir.path(), up, &format!("[{p}, {p}]"), &j);
    let errs = bsk_sidecar::config::load(&path).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("peers.bsk.passcode") && e.contains("twice")),
        "{text:?}"
    );

    let path = write_config(dir.path(), up, &p, "[]");
    let errs = bsk_sidecar::config::load(&path).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter().any(|e| e.contains("peers.bsk.jwt.secret")),
        "{text:?}"
    );
}

#[test]
fn check_shows_a_rotation_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let p = secret_file(dir.path(), "p", OLD_PASSCODE);
    let q = secret_file(dir.path(), "q", NEW_PASSCODE);
    let j = secret_file(dir.path(), "j", OLD_JWT);
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let path = write_config(dir.path(), up, &format!("[{q}, {p}]"), &j);
    let settings = bsk_sidecar::config::load(&path).unwrap_or_else(|e| panic!("{e:?}"));
    let text = settings.describe();
    assert!(
        text.contains("jwt=yes passcode=yes (2 accepted, the first seals)"),
        "{text}"
    );
}
