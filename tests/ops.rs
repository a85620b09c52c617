//! Operations, in process: allowlisted DNS names resolved through a DNS server the test
//! runs on loopback; the client address behind trusted proxies (X-Forwarded-For, PROXY
//! protocol v1 and v2) and spoofing from untrusted hops; live reload (new settings apply,
//! the replay cache survives, requests in flight finish on their config, bad configs
//! change nothing).

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

use bsk_sidecar::metrics::Metrics;
use bsk_sidecar::reload::{self, Live, ReloadError};
use bsk_sidecar::runtime::Runtime;
use bsk_sidecar::server;
use support::*;

// ---------------------------------------------------------------------------------------
// A DNS server on 127.0.0.1 that answers A / AAAA from a table the test changes.

#[derive(Clone, Default)]
struct Zone(Arc<Mutex<HashMap<String, Option<Vec<IpAddr>>>>>);

impl Zone {
    /// `None`: answer SERVFAIL for the name.
    fn set(&self, name: &str, addrs: Option<Vec<IpAddr>>) {
        self.0.lock().unwrap().insert(name.to_string(), addrs);
    }
}

async fn dns_server(zone: Zone) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = answer(&buf[..n], &zone) {
                let _ = sock.send_to(&reply, from).await;
            }
        }
    });
    addr
}

/// One reply for one question (RFC 1035 §4.1), answers compressed to the question name.
fn answer(q: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    let entry = zone.0.lock().unwrap().get(&name).cloned();
    let mut out = Vec::new();
    out.extend_from_slice(&q[0..2]);
    let (rcode, addrs): (u8, Vec<IpAddr>) = match entry {
        None => (3, vec![]),       // NXDOMAIN
        Some(None) => (2, vec![]), // SERVFAIL
        Some(Some(a)) => (0, a),
    };
    let records: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|a| matches!((a, qtype), (IpAddr::V4(_), 1) | (IpAddr::V6(_), 28)))
        .collect();
    out.extend_from_slice(&[0x85, 0x80 | rcode]); // QR AA RD, RA
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(q.get(12..question_end)?);
    for r in records {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 1]); // IN, TTL 1s
        match r {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(out)
}

/// The answer to an unsealed POST from `from`: `Some(status)`, or `None` when the
/// connection was refused before HTTP.
async fn status_from(from: IpAddr, to: SocketAddr, path: &str) -> Option<u16> {
    send_from(from, to, post(to, path, Some("text/plain"), "x"))
        .await
        .ok()
        .map(|a| a.status.as_u16())
}

#[tokio::test]
async fn dns_names_in_allowlists_follow_the_zone_and_survive_lookup_failures() {
    let zone = Zone::default();
    zone.set("dept.test.example", Some(vec![LOCAL2]));
    let dns = dns_server(zone.clone()).await;
    let yaml = format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: /tmp/bsk-sidecar-ops-dns }}
dns: {{ servers: ["{dns}"], refresh: 1s, timeout: 2s }}
peers:
  dept:
    agid: DEPT
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
    allow: [dept.test.example, 127.0.0.4]
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /in
        from: dept
        envelope: [aes]
        upstream: http://127.0.0.1:9/unused
"#
    );
    let sc = Sidecar::start(&yaml, &[]).await;
    let m = &sc.rt.metrics.ops;
    let name = "dept.test.example";
    // Resolved before serving: 127.0.0.2 passes the allowlist (and fails the envelope).
    assert_eq!(status_from(LOCAL2, sc.addr, "/in").await, Some(400));
    assert_eq!(status_from(LOCAL3, sc.addr, "/in").await, None);
    assert_eq!(
        status_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)), sc.addr, "/in").await,
        Some(400)
    );
    assert_eq!(m.dns_addresses.with_label_values(&[name]).get(), 1);
    let first_success = m.dns_last_success.with_label_values(&[name]).get();
    assert!(first_success > 0);

    // The department's address moves (A and AAAA): the allowlist follows on refresh.
    zone.set(name, Some(vec![LOCAL3, IpAddr::V6(Ipv6Addr::LOCALHOST)]));
    eventually("127.0.0.3 allowed", async || {
        status_from(LOCAL3, sc.addr, "/in").await == Some(400)
    })
    .await;
    assert_eq!(status_from(LOCAL2, sc.addr, "/in").await, None);
    assert_eq!(m.dns_addresses.with_label_values(&[name]).get(), 2);

    // The server fails: the last good addresses stay, failures are counted.
    zone.set(name, None);
    let ok_before = m.dns_resolutions.with_label_values(&[name, "ok"]).get();
    eventually("a failed lookup counted", async || {
        m.dns_resolutions.with_label_values(&[name, "error"]).get() >= 2
    })
    .await;
    assert_eq!(
        m.dns_resolutions.with_label_values(&[name, "ok"]).get(),
        ok_before
    );
    assert_eq!(status_from(LOCAL3, sc.addr, "/in").await, Some(400));
    assert_eq!(m.dns_addresses.with_label_values(&[name]).get(), 2);
    // NXDOMAIN is a failure too: nothing is dropped on an empty answer.
    zone.0.lock().unwrap().remove(name);
    let errors = m.dns_resolutions.with_label_values(&[name, "error"]).get();
    eventually("NXDOMAIN counted", async || {
        m.dns_resolutions.with_label_values(&[name, "error"]).get() > errors
    })
    .await;
    assert_eq!(status_from(LOCAL3, sc.addr, "/in").await, Some(400));

    // Back: a success updates the last-success time.
    zone.set(name, Some(vec![LOCAL2]));
    eventually("recovered", async || {
        status_from(LOCAL2, sc.addr, "/in").await == Some(400)
    })
    .await;
    assert!(m.dns_last_success.with_label_values(&[name]).get() >= first_success);
    let text = String::from_utf8(sc.rt.metrics.render()).unwrap();
    assert!(
        text.contains(r#"bsk_sidecar_dns_addresses{name="dept.test.example"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_name_that_never_resolved_allows_nobody() {
    let zone = Zone::default();
    zone.set("down.test.example", None);
    let dns = dns_server(zone.clone()).await;
    let yaml = format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: /tmp/bsk-sidecar-ops-dns2 }}
dns: {{ servers: ["{dns}"], refresh: 1s, timeout: 200ms }}
peers:
  dept:
    agid: DEPT
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
    allow: [down.test.example]
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /in, from: dept, fresh: off, envelope: [aes], upstream: "http://127.0.0.1:9/x" }}
      - {{ path: /open, from: dept, fresh: off, envelope: [aes], ip_check: false, upstream: "http://127.0.0.1:9/x" }}
"#
    );
    let sc = Sidecar::start(&yaml, &[]).await;
    // No accept-time list (one route is open): the route answers 403 itself.
    assert_eq!(status_from(LOCAL, sc.addr, "/in").await, Some(403));
    assert_eq!(status_from(LOCAL, sc.addr, "/open").await, Some(400));
    zone.set("down.test.example", Some(vec![LOCAL]));
    eventually("resolves later", async || {
        status_from(LOCAL, sc.addr, "/in").await == Some(400)
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Client address behind a load balancer.

const TRUSTED_LB: IpAddr = LOCAL2;
const REAL_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

fn proxy_config(upstream: SocketAddr) -> String {
    format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: /tmp/bsk-sidecar-ops-proxy }}
limits: {{ per_ip_rate: {{ per_second: 1000, burst: 1000 }} }}
peers:
  dept:
    agid: DEPT
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
    allow: [127.0.0.5/32]
listeners:
  - name: public
    listen: 127.0.0.1:0
    trusted_proxies: [127.0.0.2/32]
    routes:
      - {{ path: /in, from: dept, fresh: off, envelope: [aes], upstream: "http://{upstream}/in" }}
  - name: lb
    listen: 127.0.0.1:0
    trusted_proxies: [127.0.0.2]
    proxy_protocol: true
    routes:
      - {{ path: /in, from: dept, fresh: off, envelope: [aes], upstream: "http://{upstream}/in" }}
      - {{ path: /open, from: dept, fresh: off, envelope: [aes], ip_check: false, upstream: "http://{upstream}/open" }}
"#
    )
}

/// A sealed POST to `path` as raw bytes, with extra header lines.
fn sealed_bytes(path: &str, extra: &str) -> Vec<u8> {
    let body = aes_b64(SPEC_KEY, SPEC_IV, br#"{"userid":"1"}"#);
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `prefix` + a sealed request from `from`; `Some(status)` or `None` (closed).
async fn exchange(
    from: IpAddr,
    to: SocketAddr,
    prefix: &[u8],
    path: &str,
    extra: &str,
) -> Option<u16> {
    let mut s = connect_from(from, to).await.ok()?;
    let mut bytes = prefix.to_vec();
    bytes.extend(sealed_bytes(path, extra));
    s.write_all(&bytes).await.ok()?;
    read_answer(&mut s).await.ok().map(|a| a.status.as_u16())
}

fn last_forwarded_for(up: &Upstream) -> String {
    let rec = up.recorded();
    let last = rec.last().expect("a request reached the application");
    last.headers["x-forwarded-for"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn x_forwarded_for_is_read_right_to_left_from_trusted_hops_only() {
    let up = Upstream::start(Behaviour::Echo).await;
    let sc = Sidecar::start(&proxy_config(up.addr), &[]).await;
    let public = sc.listener("public");

    // Through the trusted LB: the right-most untrusted entry is the client.
    let forged_then_real = "X-Forwarded-For: 127.0.0.9, 127.0.0.5\r\n";
    assert_eq!(
        exchange(TRUSTED_LB, public, b"", "/in", forged_then_real).await,
        Some(200)
    );
    assert_eq!(last_forwarded_for(&up), "127.0.0.5");
    // Several header lines and a trusted hop in the chain.
    let lines = "X-Forwarded-For: 127.0.0.9\r\nX-Forwarded-For: 127.0.0.5, 127.0.0.2\r\n";
    assert_eq!(
        exchange(TRUSTED_LB, public, b"", "/in", lines).await,
        Some(200)
    );
    assert_eq!(last_forwarded_for(&up), "127.0.0.5");
    // The client tried to put itself on the list to the left: the LB's entry wins.
    let spoof_left = "X-Forwarded-For: 127.0.0.5, 127.0.0.9\r\n";
    assert_eq!(
        exchange(TRUSTED_LB, public, b"", "/in", spoof_left).await,
        Some(403)
    );
    // From an untrusted hop the header changes nothing: its own address is checked
    // (refused at accept, since every route on the listener checks addresses).
    assert_eq!(
        exchange(LOCAL3, public, b"", "/in", "X-Forwarded-For: 127.0.0.5\r\n").await,
        None
    );
    // The real client connecting directly is still itself.
    assert_eq!(
        exchange(
            REAL_CLIENT,
            public,
            b"",
            "/in",
            "X-Forwarded-For: 127.0.0.9\r\n"
        )
        .await,
        Some(200)
    );
    assert_eq!(last_forwarded_for(&up), "127.0.0.5");
    // The LB without a header: the LB is the client, and not allowed.
    assert_eq!(
        exchange(TRUSTED_LB, public, b"", "/in", "").await,
        Some(403)
    );
}

fn v2_header(src: Ipv4Addr, cmd: u8) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x20 | cmd, 0x11, 0, 12]);
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&[127, 0, 0, 1, 0x30, 0x39, 1, 187]);
    b
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_from_trusted_hops_only() {
    let up = Upstream::start(Behaviour::Echo).await;
    let sc = Sidecar::start(&proxy_config(up.addr), &[]).await;
    let lb = sc.listener("lb");
    let refused = |reason: &str| {
        sc.rt
            .metrics
            .connections_refused
            .with_label_values(&["lb", reason])
            .get()
    };

    let v1 = b"PROXY TCP4 127.0.0.5 127.0.0.1 56324 443\r\n";
    assert_eq!(exchange(TRUSTED_LB, lb, v1, "/in", "").await, Some(200));
    assert_eq!(last_forwarded_for(&up), "127.0.0.5");
    let v2 = v2_header(Ipv4Addr::new(127, 0, 0, 5), 1);
    assert_eq!(exchange(TRUSTED_LB, lb, &v2, "/in", "").await, Some(200));
    assert_eq!(last_forwarded_for(&up), "127.0.0.5");
    // IPv6 client in v1.
    let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\n";
    assert_eq!(exchange(TRUSTED_LB, lb, v1_6, "/open", "").await, Some(200));
    assert_eq!(last_forwarded_for(&up), "2001:db8::7");

    // The header names a client the allowlist refuses; X-Forwarded-For cannot rescue it.
    let v1_other = b"PROXY TCP4 127.0.0.9 127.0.0.1 1 443\r\n";
    assert_eq!(
        exchange(
            TRUSTED_LB,
            lb,
            v1_other,
            "/in",
            "X-Forwarded-For: 127.0.0.5\r\n"
        )
        .await,
        Some(403)
    );
    // LOCAL (health check): the LB itself, not allowed on /in, fine on /open.
    let local = v2_header(Ipv4Addr::new(127, 0, 0, 5), 0);
    assert_eq!(exchange(TRUSTED_LB, lb, &local, "/in", "").await, Some(403));
    assert_eq!(
        exchange(TRUSTED_LB, lb, &local, "/open", "").await,
        Some(200)
    );
    assert_eq!(last_forwarded_for(&up), "127.0.0.2");

    // A trusted hop that sends no header, or a broken one: closed before HTTP.
    let before = refused("proxy_header");
    assert_eq!(exchange(TRUSTED_LB, lb, b"", "/open", "").await, None);
    assert_eq!(
        exchange(TRUSTED_LB, lb, b"PROXY TCP4 nonsense\r\n", "/open", "").await,
        None
    );
    assert_eq!(refused("proxy_header"), before + 2);

    // An untrusted hop's PROXY header is not read at all: HTTP sees garbage (400), and
    // without one its own address is the client.
    let status = exchange(OTHER, lb, v1, "/open", "").await;
    assert!(matches!(status, Some(400) | None), "{status:?}");
    assert_eq!(exchange(OTHER, lb, b"", "/in", "").await, Some(403));
    assert_eq!(exchange(OTHER, lb, b"", "/open", "").await, Some(200));
    assert_eq!(last_forwarded_for(&up), "127.0.0.9");
}

#[tokio::test]
async fn proxy_settings_are_validated() {
    let bad = r#"
peers: { p: { agid: P, allow: [127.0.0.1] } }
listeners:
  - name: a
    listen: 127.0.0.1:0
    proxy_protocol: true
    routes: []
  - name: b
    listen: 127.0.0.1:0
    trusted_proxies: [lb.example.org, 10.0.0.0/33]
    routes: []
"#;
    let errs = bsk_sidecar::config::from_yaml(bad, "t.yaml", Path::new(".")).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let text = text.join("\n");
    assert!(
        text.contains("listeners[0].proxy_protocol: needs `trusted_proxies`"),
        "{text}"
    );
    assert!(text.contains("listeners[1].trusted_proxies[0]"), "{text}");
    assert!(text.contains("listeners[1].trusted_proxies[1]"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Live reload, in process.

struct LiveSidecar {
    live: Arc<Live>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_live(yaml: &str) -> LiveSidecar {
    let settings = bsk_sidecar::config::from_yaml(yaml, "test.yaml", Path::new(".")).unwrap();
    let rt = Runtime::new(settings, Metrics::new()).unwrap();
    let bound = server::bind(&rt).await.unwrap();
    let addr = bound.addr_of(&rt, "public").unwrap();
    let live = Live::new(rt);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_live(live.clone(), bound, async {
        let _ = rx.await;
    }));
    LiveSidecar {
        live,
        addr,
        stop: Some(tx),
        task,
    }
}

fn reload_config(state: &Path, upstream: SocketAddr, extra_route: &str, rate: u32) -> String {
    format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: {state} }}
limits: {{ per_ip_rate: {{ per_second: {rate}, burst: {rate} }} }}
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /status
        from: bsk
        envelope: [token, jwt]
        fresh: 10m
        upstream: http://{upstream}/status
{extra_route}
"#,
        state = state.display()
    )
}

/// The route a reload adds in these tests: `/new`, to `upstream`.
fn new_route(upstream: SocketAddr) -> String {
    format!("      - {{ path: /new, from: bsk, envelope: [token, jwt], upstream: \"http://{upstream}/new\" }}")
}

fn token_request(
    to: SocketAddr,
    path: &str,
    jti: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let claims = with_times(&format!(r#"{{"jti":"{jti}","userid":"9054233544"}}"#));
    post(
        to,
        path,
        Some("application/json"),
        token_body(PASSCODE, &hs256(&claims)),
    )
}

/// A connection keeps the runtime its last request used, without counting a reference
/// per request, until a reload replaces it; its next request then runs on the new one.
#[tokio::test]
async fn a_kept_connection_takes_its_next_request_on_the_reloaded_config() {
    let state = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Echo).await;
    let sc = start_live(&reload_config(state.path(), up.addr, "", 100)).await;
    let to = sc.addr;

    // The runtime a connection keeps is loaded once, then reused as it is.
    let mut kept = None;
    let first = sc.live.current(&mut kept).clone();
    assert!(Arc::ptr_eq(&first, &sc.live.load()));
    let references = Arc::strong_count(&first);
    assert!(Arc::ptr_eq(sc.live.current(&mut kept), &first));
    assert_eq!(
        Arc::strong_count(&first),
        references,
        "nothing counted again"
    );

    // One keep-alive connection, before and after a reload that adds a route.
    let stream = connect_from(LOCAL, to).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Full<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .unwrap();
    tokio::spawn(conn);
    let status = |r: hyper::Response<hyper::body::Incoming>| r.status().as_u16();
    let on_it = sender.send_request(token_request(to, "/new", "a")).await;
    assert_eq!(on_it.map(status).unwrap(), 404);
    let new_route = new_route(up.addr);
    let path = state.path().join("sidecar.yaml");
    std::fs::write(&path, reload_config(state.path(), up.addr, &new_route, 100)).unwrap();
    reload::reload_file(&sc.live, &path).await.unwrap();
    let on_it = sender.send_request(token_request(to, "/new", "b")).await;
    assert_eq!(
        on_it.map(status).unwrap(),
        200,
        "the same connection, the new route"
    );

    // The kept runtime is let go for the new one at the next request.
    let now = sc.live.current(&mut kept).clone();
    assert!(!Arc::ptr_eq(&now, &first));
    assert!(Arc::ptr_eq(&now, &sc.live.load()));
    drop(sender);

    let mut sc = sc;
    let _ = sc.stop.take().unwrap().send(());
    sc.task.await.unwrap();
}

#[tokio::test]
async fn reload_applies_new_settings_keeps_the_replay_cache_and_refuses_bad_configs() {
    let state = tempfile::tempdir().unwrap();
    let up = Upstream::start(Behaviour::Echo).await;
    let gated = Upstream::start(Behaviour::Gated).await;
    let gated_route = format!(
        "      - {{ path: /slow, from: bsk, envelope: [token, jwt], upstream: \"http://{}/slow\" }}",
        gated.addr
    );
    let sc = start_live(&reload_config(state.path(), up.addr, &gated_route, 100)).await;
    let to = sc.addr;
    let metrics = sc.live.load().metrics.clone();
    let reloads = |o: &str| metrics.ops.config_reloads.with_label_values(&[o]).get();

    assert_eq!(
        send(to, token_request(to, "/status", "one")).await.status,
        200
    );
    assert_eq!(send(to, token_request(to, "/new", "x")).await.status, 404);

    // A request in flight on /slow while a reload removes that route.
    let slow = tokio::spawn(send_from(LOCAL, to, token_request(to, "/slow", "slow-1")));
    gated.wait_for(1).await;
    let new_route = new_route(up.addr);
    let path = state.path().join("sidecar.yaml");
    std::fs::write(&path, reload_config(state.path(), up.addr, &new_route, 100)).unwrap();
    reload::reload_file(&sc.live, &path).await.unwrap();
    assert_eq!(reloads("ok"), 1);
    gated.release();
    let finished = slow.await.unwrap().unwrap();
    assert_eq!(
        finished.status, 200,
        "the in-flight request finished on its config"
    );

    // The new settings are in force...
    assert_eq!(send(to, token_request(to, "/new", "two")).await.status, 200);
    assert_eq!(
        send(to, token_request(to, "/slow", "three")).await.status,
        404
    );
    // ... and the replay cache is the same: the first request is still a replay.
    let again = send(to, token_request(to, "/status", "one")).await;
    again.assert_error(409, "replayed");

    // A config that does not validate: refused, counted, the running one stays.
    std::fs::write(&path, "peers: {}\nlisteners: []\nnot_a_key: 1\n").unwrap();
    let err = reload::reload_file(&sc.live, &path).await.unwrap_err();
    assert!(
        matches!(err, ReloadError::Invalid(ref e) if !e.is_empty()),
        "{err}"
    );
    assert_eq!(reloads("error"), 1);
    assert_eq!(
        send(to, token_request(to, "/new", "four")).await.status,
        200
    );

    // Listeners renamed: needs a restart, refused.
    let renamed = reload_config(state.path(), up.addr, &new_route, 100)
        .replace("name: public", "name: other");
    std::fs::write(&path, renamed).unwrap();
    let err = reload::reload_file(&sc.live, &path).await.unwrap_err();
    assert!(matches!(err, ReloadError::Listeners(_)), "{err}");
    assert_eq!(reloads("error"), 2);

    // Rate limits: unchanged settings keep their buckets, changed ones start anew.
    let before = sc.live.load();
    std::fs::write(&path, reload_config(state.path(), up.addr, &new_route, 100)).unwrap();
    reload::reload_file(&sc.live, &path).await.unwrap();
    let after = sc.live.load();
    assert!(Arc::ptr_eq(
        before.per_ip.as_ref().unwrap(),
        after.per_ip.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        before.replay.as_ref().unwrap(),
        after.replay.as_ref().unwrap()
    ));
    std::fs::write(&path, reload_config(state.path(), up.addr, &new_route, 7)).unwrap();
    reload::reload_file(&sc.live, &path).await.unwrap();
    let changed = sc.live.load();
    assert!(!Arc::ptr_eq(
        after.per_ip.as_ref().unwrap(),
        changed.per_ip.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        after.replay.as_ref().unwrap(),
        changed.replay.as_ref().unwrap()
    ));
    assert_eq!(reloads("ok"), 3);

    let mut sc = sc;
    let _ = sc.stop.take().unwrap().send(());
    sc.task.await.unwrap();
}
