//! Only the department's application may make the sidecar sign as the department: an
//! egress listener refuses pushes from any address outside its `callers` (default
//! 127.0.0.1 and ::1 — not the rest of 127.0.0.0/8) and, with `caller_token`, any push
//! without the right `X-Sidecar-Token`; the token never reaches the remote peer.

mod egress_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

use egress_support::*;

const APP_TOKEN: &str = "application-caller-token-42";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OTHER_LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 200));

/// The shared egress config with `extra` lines added to the egress listener.
fn write_config(
    dir: &Path,
    name: &str,
    peer: &RemotePeer,
    pki: &Pki,
    extra: &str,
) -> std::path::PathBuf {
    let text = config(
        &peer.url(),
        &pki.ca_file(),
        &dir.join(format!("{name}-state")),
    );
    let egress = "  - name: egress\n    listen: 127.0.0.1:0\n";
    assert!(text.contains(egress));
    let text = text.replace(egress, &format!("{egress}{extra}"));
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A push to `route` from source address `from`, with `token` as `X-Sidecar-Token`.
async fn push_from(
    from: IpAddr,
    to: SocketAddr,
    route: &str,
    token: Option<&str>,
    json: &str,
) -> (u16, serde_json::Value) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(to).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::post(route)
        .header(header::HOST, to.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header("x-sidecar-token", t);
    }
    let req = req.body(Full::new(Bytes::from(json.to_string()))).unwrap();
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

fn assert_caller_denied(status: u16, v: &serde_json::Value) {
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["reason"], "caller_denied", "{v}");
    assert_eq!(v["statusCode"], 403, "{v}");
}

const API6: &str = r#"{"userId":9054233544,"deptCode":"AMD","accessCode":7364443,"ticketNo":20221202153322882,"appNo":"X-1"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopbacks_own_address_may_push_by_default() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let peer = RemotePeer::up(&pki).await;
    let cfg = write_config(dir.path(), "default", &peer, &pki, "");
    let sc = Sidecar::start(&cfg);
    let to = sc.egress();

    // Another local process on 127.0.0.200: refused, synchronous or queued.
    let (status, v) = push_from(OTHER_LOCAL, to, "/api6", None, API6).await;
    assert_caller_denied(status, &v);
    let (status, v) = push_from(
        OTHER_LOCAL,
        to,
        "/push/queued",
        None,
        &api2(1, "20261130", 1),
    )
    .await;
    assert_caller_denied(status, &v);

    // The application on 127.0.0.1: accepted.
    let (status, v) = push_from(LOCAL, to, "/api6", None, API6).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = push_from(LOCAL, to, "/push/queued", None, &api2(2, "20261130", 1)).await;
    assert_eq!(status, 202, "{v}");
    wait_outbox_empty(&sc).await;
    // The peer got exactly the two accepted pushes (a refused one queued would be there).
    let got = peer.received();
    assert_eq!(got.len(), 2, "{:?}", tickets(&got));
    assert_eq!(
        tickets(&got[1..]),
        [key_of(
            &serde_json::from_str(&api2(2, "20261130", 1)).unwrap()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_token_is_required_and_never_forwarded() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let peer = RemotePeer::up(&pki).await;
    let extra = format!("    callers: [127.0.0.1/32]\n    caller_token: \"{APP_TOKEN}\"\n");
    let cfg = write_config(dir.path(), "token", &peer, &pki, &extra);
    let (ok, out, err) = cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("callers=[127.0.0.1/32] caller_token"), "{out}");
    assert!(!out.contains(APP_TOKEN), "{out}");
    let sc = Sidecar::start(&cfg);
    let to = sc.egress();

    for token in [None, Some("application-caller-token-4"), Some("wrong")] {
        let (status, v) = push_from(LOCAL, to, "/api6", token, API6).await;
        assert_caller_denied(status, &v);
    }
    // The right token from an address outside `callers` is still refused.
    let (status, v) = push_from(OTHER_LOCAL, to, "/api6", Some(APP_TOKEN), API6).await;
    assert_caller_denied(status, &v);
    assert!(peer.received().is_empty());

    let (status, v) = push_from(LOCAL, to, "/api6", Some(APP_TOKEN), API6).await;
    assert_eq!(status, 200, "{v}");
    let got = peer.received();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].headers.get("x-sidecar-token").is_none(),
        "{:?}",
        got[0].headers
    );
    assert!(!String::from_utf8_lossy(&got[0].plain).contains(APP_TOKEN));
}
