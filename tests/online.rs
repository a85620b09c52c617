//! `bsk-sidecar check --online` against real servers on loopback: an upstream that
//! listens and one that does not, a peer over TLS (its own CA) whose clock is right and
//! one whose `Date` is two hours ahead, an allowlisted name nobody answers for. One
//! `ok`/`FAIL` line per item; any FAIL exits non-zero.

mod egress_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use egress_support::{port, Pki};

const BIN: &str = env!("CARGO_BIN_EXE_bsk-sidecar");

/// An HTTPS server for `localhost` whose answers carry `Date` = now + `skew`.
async fn peer(pki: &Pki, skew: Duration) -> SocketAddr {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req| async move {
                    let date = httpdate::fmt_http_date(SystemTime::now() + skew);
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("date", date)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A port with nothing listening.
fn closed_port() -> u16 {
    port::unclaimed()
}

fn config(dir: &Path, upstreams: &[u16], peer: u16, ca: &Path, allow: &str) -> std::path::PathBuf {
    let routes: String = upstreams
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "      - {{ path: /r{i}, from: bsk, envelope: [aes], upstream: \"http://127.0.0.1:{port}/x\" }}\n"
            )
        })
        .collect();
    let yaml = format!(
        r#"
admin: {{ listen: "127.0.0.1:0", token: "online-test-admin-token" }}
state: {{ dir: "{state}" }}
dns: {{ servers: ["127.0.0.1:{dns}"], timeout: 100ms }}
peers:
  bsk:
    agid: BSK
    aes: {{ keys: [ {{ key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }} ] }}
    allow: [{allow}]
    url: https://localhost:{peer}/api
    tls: {{ ca: "{ca}" }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
{routes}"#,
        state = dir.join("state").display(),
        dns = closed_port(),
        ca = ca.display(),
    );
    let path = dir.join("online.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn check_online(config: std::path::PathBuf) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(["check", "--online", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    })
    .await
    .unwrap()
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting `{prefix}` in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_reachable_thing_is_ok_and_every_broken_one_fails() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    let honest = peer(&pki, Duration::ZERO).await;

    // All well: exit 0, every line `ok`.
    let good = config(
        dir.path(),
        &[app_port],
        honest.port(),
        &pki.ca_file(),
        "127.0.0.0/8",
    );
    let (code, text) = check_online(good).await;
    assert_eq!(code, Some(0), "{text}");
    line(
        &text,
        &format!("ok   upstream 127.0.0.1:{app_port} (listener public route /r0): connected in"),
    );
    let connected = line(
        &text,
        &format!(
            "ok   peer bsk https://localhost:{}/api: connected to localhost:{} (TLS)",
            honest.port(),
            honest.port()
        ),
    );
    assert!(connected.ends_with("HEAD answered 200"), "{connected}");
    let cert = line(&text, "ok   peer bsk certificate: certificate expires ");
    assert!(cert.contains(" days)"), "{cert}");
    line(&text, "ok   peer bsk clock: ");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("online: all 4 ok"), "{text}");

    // A dead upstream, a name nobody resolves, a peer two hours ahead: exit 1, each named.
    let skewed = peer(&pki, Duration::from_secs(7200)).await;
    let dead = closed_port();
    let bad = config(
        dir.path(),
        &[app_port, dead],
        skewed.port(),
        &pki.ca_file(),
        "127.0.0.0/8, portal.online.test.example",
    );
    let (code, text) = check_online(bad).await;
    assert_eq!(code, Some(1), "{text}");
    line(&text, "FAIL dns portal.online.test.example: ");
    line(&text, &format!("ok   upstream 127.0.0.1:{app_port} "));
    let refused = line(
        &text,
        &format!("FAIL upstream 127.0.0.1:{dead} (listener public route /r1): cannot connect"),
    );
    assert!(refused.contains("refused"), "{refused}");
    // `Date` has whole seconds: two hours ahead reads as 7199 or 7200 s.
    let clock = line(&text, "FAIL peer bsk clock: +7");
    assert!(
        clock.contains("+7199 s from its Date header")
            || clock.contains("+7200 s from its Date header"),
        "{clock}"
    );
    assert!(clock.contains("NTP"), "{clock}");
    assert!(text.contains("online: 3 of 6 failed"), "{text}");

    // A peer that does not listen: the connect fails, and nothing after it is guessed.
    let nobody = closed_port();
    let gone = config(
        dir.path(),
        &[app_port],
        nobody,
        &pki.ca_file(),
        "127.0.0.0/8",
    );
    let (code, text) = check_online(gone).await;
    assert_eq!(code, Some(1), "{text}");
    line(
        &text,
        &format!(
            "FAIL peer bsk https://localhost:{nobody}/api: connect to localhost:{nobody} failed"
        ),
    );
    assert!(!text.contains("peer bsk clock"), "{text}");
    drop(app);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_certificate_from_an_unknown_ca_fails_the_handshake() {
    let pki = Pki::new();
    let other = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    let server = peer(&pki, Duration::ZERO).await;
    let cfg = config(
        dir.path(),
        &[app_port],
        server.port(),
        &other.ca_file(),
        "127.0.0.0/8",
    );
    let (code, text) = check_online(cfg).await;
    assert_eq!(code, Some(1), "{text}");
    let tls = line(
        &text,
        &format!(
            "FAIL peer bsk https://localhost:{}/api: TLS with localhost:{}",
            server.port(),
            server.port()
        ),
    );
    assert!(tls.contains("certificate"), "{tls}");
}
