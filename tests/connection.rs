//! Connection-level limits a slowloris or an idle client runs into: header read timeout,
//! keep-alive idle timeout, header size limit, per-address connection cap.

use std::path::Path;
use std::time::Duration;

use bsk_sidecar::metrics::Metrics;
use bsk_sidecar::runtime::Runtime;
use bsk_sidecar::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const CONFIG: &str = r#"
admin: { listen: "off" }
state: { dir: /tmp/bsk-sidecar-test }
limits:
  header_read_timeout: 300ms
  keepalive_idle: 400ms
  max_header_bytes: 4KiB
  max_connections_per_ip: 2
peers:
  bsk:
    agid: BSK
    aes: { keys: [ { key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" } ] }
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/landing
        from: bsk
        envelope: [form, aes]
        ip_check: false
        fresh: off                    # connection limits, not payloads, are tested here
        upstream: http://127.0.0.1:9/unused
"#;

struct Sidecar {
    addr: std::net::SocketAddr,
    rt: std::sync::Arc<Runtime>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sidecar {
    async fn start() -> Sidecar {
        Sidecar::start_with(CONFIG).await
    }

    async fn start_with(yaml: &str) -> Sidecar {
        let settings = bsk_sidecar::config::from_yaml(yaml, "test.yaml", Path::new(".")).unwrap();
        let rt = Runtime::new(settings, Metrics::new()).unwrap();
        let bound = server::bind(&rt).await.unwrap();
        let addr = bound.addr_of(&rt, "public").unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(rt.clone(), bound, async move {
            let _ = rx.await;
        }));
        Sidecar {
            addr,
            rt,
            stop: Some(tx),
            task,
        }
    }

    /// Connections waiting for a request held without HTTP buffers.
    fn parked(&self) -> i64 {
        let gauge = &self.rt.metrics.connections_parked;
        gauge.with_label_values(&["public"]).get()
    }

    /// Waits until `parked()` is `n`; the bound only keeps a broken build from hanging.
    async fn until_parked(&self, n: i64) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while self.parked() != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "parked connections stayed {}",
            self.parked()
        );
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// Reads until the server closes the connection (EOF or reset); returns what was read.
/// The outer bound only keeps a broken build from hanging: the server is expected to
/// close far sooner.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(res.is_ok(), "server never closed the connection");
    out
}

const GET_404: &[u8] = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn slow_request_head_is_cut_off() {
    let sc = Sidecar::start().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    // Half a request head, then nothing (slowloris).
    s.write_all(b"POST /bsk/landing HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(
        got.is_empty() || !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    sc.stop().await;
}

#[tokio::test]
async fn a_head_begun_behind_an_answered_request_is_held_to_the_head_deadline() {
    // keepalive_idle far longer than the test's patience: only the head deadline (300 ms)
    // can close the connection.
    let sc =
        Sidecar::start_with(&CONFIG.replace("keepalive_idle: 400ms", "keepalive_idle: 60s")).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    // A whole request, and behind it in the same write the start of a second, then nothing.
    let mut bytes = GET_404.to_vec();
    bytes.extend_from_slice(b"POST /bsk/landing HTTP/1.1\r\nHost: x\r\n");
    s.write_all(&bytes).await.unwrap();
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    sc.stop().await;
}

/// A connection that never sends is held for the head's deadline, not the idle one: it
/// would otherwise keep a connection slot of its address for keepalive_idle.
#[tokio::test]
async fn silent_new_connection_is_closed_at_the_head_deadline() {
    let yaml = CONFIG.replace("keepalive_idle: 400ms", "keepalive_idle: 60s");
    let sc = Sidecar::start_with(&yaml).await;
    let opened = std::time::Instant::now();
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());
    let held = opened.elapsed();
    assert!(
        held < Duration::from_secs(10),
        "held {held:?}: the head deadline is 300 ms, keepalive_idle 60 s"
    );
    sc.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_serving() {
    let sc = Sidecar::start().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(GET_404).await.unwrap();
    // The answer comes, keep-alive, then the server closes the idle connection.
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains(r#""reason":"not_found""#), "{text}");
    sc.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let sc = Sidecar::start().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(GET_404).await.unwrap();
    s.write_all(GET_404).await.unwrap();
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 404").count(), 2, "{text}");
    sc.stop().await;
}

/// Reads one whole answer (head and a `Content-Length` body) off a kept-alive connection.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap();
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before a whole answer: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_idle_connection_is_parked_then_serves_its_next_request_and_closes_when_idle() {
    let sc = Sidecar::start().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(GET_404).await.unwrap();
    assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 404"));
    // Idle between requests: held without hyper's buffers.
    sc.until_parked(1).await;
    // The next request on the same connection is served as if nothing happened.
    s.write_all(GET_404).await.unwrap();
    let second = read_answer(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 404"), "{second}");
    assert!(second.contains(r#""reason":"not_found""#), "{second}");
    assert!(!second.contains("connection: close"), "{second}");
    // Parked again, and closed once idle for keepalive_idle: nothing more arrives.
    sc.until_parked(1).await;
    assert!(read_until_closed(&mut s).await.is_empty());
    sc.until_parked(0).await;
    sc.stop().await;
}

#[tokio::test]
async fn a_new_connection_waits_parked_for_its_first_request() {
    let sc = Sidecar::start().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    // Nothing sent yet: held with its socket only, no read buffer or serving state.
    sc.until_parked(1).await;
    s.write_all(GET_404).await.unwrap();
    let first = read_answer(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    // Parked again after its answer, and closed once idle for keepalive_idle.
    sc.until_parked(1).await;
    assert!(read_until_closed(&mut s).await.is_empty());
    sc.until_parked(0).await;
    sc.stop().await;
}

#[tokio::test]
async fn a_parked_connection_closes_at_once_on_shutdown() {
    let sc = Sidecar::start().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(GET_404).await.unwrap();
    read_answer(&mut s).await;
    sc.until_parked(1).await;
    // The drain waits for every connection; a parked one has nothing in flight, so
    // shutting down closes it instead of waiting out shutdown_grace (30 s by default).
    tokio::time::timeout(Duration::from_secs(10), sc.stop())
        .await
        .expect("the drain did not wait for the parked connection");
    assert!(read_until_closed(&mut s).await.is_empty());
}

/// A client answered 429 that sends on at once is not read for a pause: its next
/// request is answered no sooner than 100 ms after the 429, however fast it writes.
#[tokio::test]
async fn a_connection_answered_429_is_not_read_for_a_pause() {
    let yaml = CONFIG.replace(
        "  max_connections_per_ip: 2\n",
        "  max_connections_per_ip: 2\n  per_ip_rate: { per_second: 1, burst: 1 }\n",
    );
    let sc = Sidecar::start_with(&yaml).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let post = b"POST /bsk/landing HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nencData=x";
    // The first spends the address's only token (and fails later, on its envelope).
    s.write_all(post).await.unwrap();
    let first = read_answer(&mut s).await;
    assert!(!first.starts_with("HTTP/1.1 429"), "{first}");
    s.write_all(post).await.unwrap();
    let limited = read_answer(&mut s).await;
    assert!(limited.starts_with("HTTP/1.1 429"), "{limited}");
    let refused_at = std::time::Instant::now();
    // Written at once; read only after the pause.
    s.write_all(post).await.unwrap();
    let next = read_answer(&mut s).await;
    assert!(next.starts_with("HTTP/1.1 429"), "{next}");
    let waited = refused_at.elapsed();
    assert!(
        waited >= Duration::from_millis(90),
        "answered after {waited:?}"
    );
    sc.stop().await;
}

#[tokio::test]
async fn oversized_header_block_is_refused() {
    let sc = Sidecar::start().await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let big = "a".repeat(8 * 1024);
    let req = format!("GET /bsk/landing HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_json_refusal(&text, 431, "header_too_large");
    sc.stop().await;
}

/// An answer from the HTTP layer: the spec's error shape, its request id also in
/// `X-Request-Id`, and the connection closed.
fn assert_json_refusal(text: &str, status: u16, reason: &str) {
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{text}"
    );
    assert!(head.contains("\r\nconnection: close"), "{text}");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["statusCode"], status, "{text}");
    assert_eq!(v["reason"], reason, "{text}");
    let id = v["requestId"].as_str().unwrap_or_default();
    assert!(
        !id.is_empty() && head.contains(&format!("\r\nx-request-id: {id}")),
        "{text}"
    );
}

#[tokio::test]
async fn malformed_http_is_refused_in_json_and_the_connection_closed() {
    let sc = Sidecar::start().await;
    for (bytes, status, reason) in [
        (
            &b"POST /bsk/landing HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
            400,
            "bad_request",
        ),
        (
            b"POST /bsk/landing HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
            "bad_request",
        ),
        (b"GET /bsk/la nding HTTP/1.1\r\n\r\n", 400, "bad_request"),
    ] {
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let got = read_until_closed(&mut s).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert_json_refusal(&text, status, reason);
    }
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(65_535));
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let _ = s.write_all(long.as_bytes()).await;
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 431 "),
        "over the head limit first: {text}"
    );
    sc.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let sc = Sidecar::start().await;
    let mut a = TcpStream::connect(sc.addr).await.unwrap();
    let mut b = TcpStream::connect(sc.addr).await.unwrap();
    // Prove both admitted connections are being served before opening the third.
    for s in [&mut a, &mut b] {
        s.write_all(GET_404).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 404");
    }
    let mut c = TcpStream::connect(sc.addr).await.unwrap();
    let _ = c.write_all(GET_404).await;
    let got = read_until_closed(&mut c).await;
    assert!(
        got.is_empty(),
        "third connection was served: {}",
        String::from_utf8_lossy(&got)
    );
    drop((a, b));
    sc.stop().await;
}
