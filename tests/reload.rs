//! The real binary under systemd's notify protocol: READY once serving, RELOADING/READY
//! around each SIGHUP, watchdog keep-alives, STOPPING on SIGTERM; 20 reloads while two
//! clients stream requests without a single failure, each reload's settings in force as
//! soon as READY comes back; a refused config keeps serving; SIGTERM drains an in-flight
//! request and exits 0.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixDatagram};
use tokio::sync::mpsc;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsk-sidecar");
const RELOADS: u32 = 20;

fn config(
    state: &Path,
    listen: SocketAddr,
    up: SocketAddr,
    slow: SocketAddr,
    version: u32,
) -> String {
    format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: {state} }}
limits: {{ per_ip_rate: {{ per_second: 100000, burst: 100000 }}, shutdown_grace: 10s }}
peers:
  dept:
    agid: DEPT
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
listeners:
  - name: public
    listen: {listen}
    routes:
      - {{ path: /status, from: dept, fresh: off, envelope: [aes], ip_check: false, forward_headers: [X-Probe], upstream: "http://{up}/v{version}" }}
      - {{ path: /slow, from: dept, fresh: off, envelope: [aes], ip_check: false, upstream: "http://{slow}/slow" }}
"#,
        state = state.display()
    )
}

/// Writes the config the way an operator's tooling should: a whole new file, renamed in.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn sealed(to: SocketAddr, path: &str, probe: Option<u32>) -> Request<Full<Bytes>> {
    let mut b = request(Method::POST, to, path).header(header::CONTENT_TYPE, "text/plain");
    if let Some(p) = probe {
        b = b.header("x-probe", p.to_string());
    }
    b.body(Full::new(Bytes::from(aes_b64(
        SPEC_KEY,
        SPEC_IV,
        br#"{"userid":"1"}"#,
    ))))
    .unwrap()
}

/// The sidecar process; killed if the test fails before it exits by itself.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// The next notify message that contains `want`, collecting watchdog pings on the way.
async fn expect_notify(
    rx: &mut mpsc::UnboundedReceiver<String>,
    want: &str,
    pings: &AtomicU64,
) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want} from the sidecar"))
            .expect("notify socket open");
        if msg.contains("WATCHDOG=1") {
            pings.fetch_add(1, Ordering::Relaxed);
        }
        if msg.lines().any(|l| l == want) {
            return msg;
        }
    }
}

/// Sends requests until `stop`: on one keep-alive connection (`keep_alive`) or a new
/// connection each time. Returns (requests, failures).
async fn stream(to: SocketAddr, keep_alive: bool, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut total, mut failed) = (0u64, 0u64);
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.is_none() {
            match TcpStream::connect(to).await {
                Ok(s) => {
                    let (tx, conn) =
                        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s))
                            .await
                            .expect("handshake");
                    tokio::spawn(conn);
                    sender = Some(tx);
                }
                Err(e) => {
                    total += 1;
                    failed += 1;
                    eprintln!("connect failed: {e}");
                    continue;
                }
            }
        }
        let tx = sender.as_mut().unwrap();
        total += 1;
        let ok = match tx.send_request(sealed(to, "/status", None)).await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                if status != 200 {
                    eprintln!("status {status}: {body:?}");
                }
                status == 200 && body.is_ok()
            }
            Err(e) => {
                eprintln!("request failed: {e}");
                false
            }
        };
        if !ok {
            failed += 1;
        }
        if !ok || !keep_alive {
            sender = None;
        }
    }
    (total, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Echo).await;
    let slow = Upstream::start(Behaviour::Gated).await;
    let listen = closed_port().await;
    let cfg_path = dir.path().join("sidecar.yaml");
    let state = dir.path().join("state");
    write_config(&cfg_path, &config(&state, listen, up.addr, slow.addr, 0));

    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (ntx, mut nrx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf).await {
            let _ = ntx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    // As systemd does: WATCHDOG_PID is the service's own pid (`exec` keeps the shell's).
    let mut child = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg(r#"WATCHDOG_PID=$$ exec "$0" run --config "$1""#)
            .arg(BIN)
            .arg(&cfg_path)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "200000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("sidecar.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let pings = AtomicU64::new(0);
    let ready = expect_notify(&mut nrx, "READY=1", &pings).await;
    assert!(ready.contains("STATUS=serving"), "{ready}");

    // Two clients stream requests for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = [
        tokio::spawn(stream(listen, true, stop.clone())),
        tokio::spawn(stream(listen, false, stop.clone())),
    ];
    // Both clients are through before the first reload.
    up.wait_for(20).await;

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for v in 1..=RELOADS {
        write_config(&cfg_path, &config(&state, listen, up.addr, slow.addr, v));
        let t = Instant::now();
        signal(&child.0, "-HUP");
        let reloading = expect_notify(&mut nrx, "RELOADING=1", &pings).await;
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
        expect_notify(&mut nrx, "READY=1", &pings).await;
        slowest = slowest.max(t.elapsed());
        // In force as soon as READY is back: a probe reaches the new upstream path.
        let probe = send(listen, sealed(listen, "/status", Some(v))).await;
        assert_eq!(probe.status, 200);
        let rec = up.recorded();
        let got = rec
            .iter()
            .rev()
            .find(|r| {
                r.headers
                    .get("x-probe")
                    .is_some_and(|h| h == v.to_string().as_str())
            })
            .expect("probe reached the application");
        assert_eq!(got.path, format!("/v{v}"), "reload {v} not in force");
        // Let the streams run on this config before the next reload.
        up.wait_for(rec.len() + 10).await;
    }
    let reload_phase = started.elapsed();

    // A refused config: the process keeps serving the last good one.
    write_config(&cfg_path, "listeners: [ { name: public } ]\n");
    signal(&child.0, "-HUP");
    expect_notify(&mut nrx, "RELOADING=1", &pings).await;
    let ready = expect_notify(&mut nrx, "READY=1", &pings).await;
    assert!(
        ready.contains("STATUS=serving the previous configuration; reload refused"),
        "{ready}"
    );
    let after = send(listen, sealed(listen, "/status", Some(999))).await;
    assert_eq!(after.status, 200);

    stop.store(true, Ordering::Relaxed);
    let (mut total, mut failed) = (0, 0);
    for c in clients {
        let (t, f) = c.await.unwrap();
        total += t;
        failed += f;
    }
    eprintln!(
        "reload under load: {RELOADS} reloads in {:.2}s (slowest SIGHUP->READY {:.1} ms), \
         {total} requests, {failed} failed, {} watchdog pings",
        reload_phase.as_secs_f64(),
        slowest.as_secs_f64() * 1000.0,
        pings.load(Ordering::Relaxed)
    );
    // The watchdog keeps pinging while the sidecar serves: wait for the third ping (the
    // reloads may finish before it is due), each within the notify deadline.
    while pings.load(Ordering::Relaxed) < 3 {
        expect_notify(&mut nrx, "WATCHDOG=1", &pings).await;
    }
    // The log is written by its own thread: wait for the last reload's line to be out.
    let read_log = || std::fs::read_to_string(dir.path().join("sidecar.log")).unwrap_or_default();
    let deadline = Instant::now() + PATIENCE;
    let mut log = read_log();
    while !log.contains("configuration reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refused reload logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        log = read_log();
    }
    assert_eq!(failed, 0, "{failed} of {total} requests failed\n{log}");
    assert!(total > 100, "only {total} requests during the reloads");
    assert!(
        pings.load(Ordering::Relaxed) >= 3,
        "watchdog pings: {}",
        pings.load(Ordering::Relaxed)
    );
    assert_eq!(
        log.matches("configuration reloaded").count(),
        RELOADS as usize,
        "{log}"
    );
    assert!(log.contains("configuration reload refused"), "{log}");

    // SIGTERM with a request in flight: STOPPING, the request completes, exit 0.
    let in_flight = tokio::spawn(send_from(LOCAL, listen, sealed(listen, "/slow", None)));
    slow.wait_for(1).await;
    signal(&child.0, "-TERM");
    expect_notify(&mut nrx, "STOPPING=1", &pings).await;
    // No new connections while draining.
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(listen).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting while draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slow.release();
    let answer = in_flight
        .await
        .unwrap()
        .expect("in-flight request answered");
    assert_eq!(answer.status, 200);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}
