//! The admin listener's access control, against the real binary: the `admin.token`
//! (Bearer or HTTP Basic password), refusal of browser requests (`Origin`) and DNS
//! rebinding (`Host`), open health probes, `/metrics` per `admin.metrics`, the connection
//! cap, and the `outbox` CLI talking to a running sidecar with the token.

mod egress_support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use egress_support::*;

/// The token `outbox()` in the support module sends.
const TOKEN: &str = ADMIN_TOKEN;

/// An egress listener whose peer is down (pushes stay queued), a public listener, and
/// the `admin:` block given.
fn write_config(dir: &Path, admin_extra: &str) -> PathBuf {
    // Nothing listens on `peer`; `admin` is named in the config for the CLI to find.
    let free = || std::net::SocketAddr::from(([127, 0, 0, 1], port::unclaimed()));
    let (peer, admin) = (free(), free());
    let config = format!(
        r#"
admin: {{ listen: "{admin}"{admin_extra} }}
state: {{ dir: "{state}" }}
peers:
  bsk:
    agid: BSK
    passcode: "{PASSCODE}"
    jwt: {{ secret: "{JWT_SECRET}", sign_exp: 5m }}
    url: https://{peer}
listeners:
  - name: egress
    listen: 127.0.0.1:0
    routes:
      - path: /push/queued
        to: bsk
        remote: /push
        envelope: [token, jwt]
        delivery: queued
        retry: {{ initial: 10s, max: 10s }}
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/missed
        from: bsk
        envelope: [token, jwt]
        ip_check: false
        serve: journal
"#,
        state = dir.join("state").display(),
    );
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

fn basic(user: &str, password: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn admin_api_needs_the_token_and_refuses_browsers_and_rebinding() {
    let dir = tempfile::tempdir().unwrap();
    // The token from a file, as `echo TOKEN > file` leaves it.
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let cfg = write_config(dir.path(), r#", token: { file: admin.token }"#);
    let sc = Sidecar::start(&cfg);
    let (status, _) = push(&sc, "/push/queued", &api2(1, "20261130", 1)).await;
    assert_eq!(status, 202);
    let bearer = format!("Bearer {TOKEN}");
    let a = sc.admin;

    // No token, a wrong token, the token under the wrong scheme: 401 with a challenge.
    for auth in [
        None,
        Some(format!("Bearer {TOKEN}x")),
        Some(basic("admin", "wrong")),
        Some(format!("Token {TOKEN}")),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|v| ("authorization", v.as_str())).collect();
        let (status, h, body) = admin_request(a, "GET", "/outbox", &headers).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(
            h.get("www-authenticate").and_then(|v| v.to_str().ok()),
            Some(r#"Basic realm="bsk-sidecar admin""#)
        );
        let v = json(&body);
        assert_eq!(v["statusCode"], 401);
        assert_eq!(v["reason"], "unauthorized");
        assert!(
            !String::from_utf8_lossy(&body).contains("queued"),
            "leaked the outbox"
        );
    }

    // Bearer, and Basic with any user name: the listing.
    for auth in [bearer.clone(), basic("", TOKEN), basic("ops", TOKEN)] {
        let (status, _, body) =
            admin_request(a, "GET", "/outbox", &[("authorization", &auth)]).await;
        assert_eq!(status, 200, "{auth}: {}", String::from_utf8_lossy(&body));
        assert_eq!(json(&body)["queued"].as_array().map(Vec::len), Some(1));
    }
    let id = outbox(&sc).await["queued"][0]["id"].to_string();

    // The reviewed attack: a web page's simple POST, even one that knew the token.
    let drop_path = format!("/outbox/{id}/drop");
    for headers in [
        vec![
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ],
        vec![
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
            ("authorization", bearer.as_str()),
        ],
        vec![("origin", "null"), ("authorization", bearer.as_str())],
    ] {
        let (status, _, body) = admin_request(a, "POST", &drop_path, &headers).await;
        assert_eq!(status, 403, "{headers:?}");
        assert_eq!(json(&body)["reason"], "cross_origin");
    }
    // DNS rebinding: the browser names the attacker's host.
    for host in [
        "evil.example",
        "evil.example:80",
        &format!("evil.example:{}", a.port()),
    ] {
        let (status, _, body) = admin_request(
            a,
            "POST",
            &drop_path,
            &[("host", host), ("authorization", bearer.as_str())],
        )
        .await;
        assert_eq!(status, 403, "{host}");
        assert_eq!(json(&body)["reason"], "bad_host");
    }
    assert_eq!(
        outbox(&sc).await["queued"].as_array().map(Vec::len),
        Some(1)
    );

    // Health probes stay open; `/metrics` needs the token by default.
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = admin_request(a, "GET", path, &[]).await;
        assert_eq!(status, 200, "{path}");
        let (status, _, _) = admin_request(a, "GET", path, &[("host", "localhost")]).await;
        assert_eq!(status, 200, "{path} as localhost");
    }
    let (status, _, _) = admin_request(a, "GET", "/metrics", &[]).await;
    assert_eq!(status, 401);
    let (status, _, body) =
        admin_request(a, "GET", "/metrics", &[("authorization", bearer.as_str())]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("bsk_sidecar_"));

    // The CLI finds the running sidecar and sends the token from the config.
    let config = cfg.to_str().unwrap();
    let (ok, out, err) = cli(&["outbox", "list", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("1 push(es)"), "{out}");
    let (ok, out, err) = cli(&["outbox", "drop", &id, "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("dropped"), "{out}");
    assert_eq!(
        outbox(&sc).await["queued"].as_array().map(Vec::len),
        Some(0)
    );

    // A config with another token is refused, and says why.
    std::fs::write(dir.path().join("admin.token"), "not-the-token\n").unwrap();
    let (ok, _, err) = cli(&["outbox", "list", "--config", config]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
}

#[tokio::test]
async fn without_a_token_the_outbox_is_closed_and_metrics_open_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), ", metrics: open");
    let (ok, out, err) = cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("no admin.token") && out.contains("metrics=open"),
        "{out}"
    );

    let sc = Sidecar::start(&cfg);
    let (status, _) = push(&sc, "/push/queued", &api2(2, "20261130", 1)).await;
    assert_eq!(status, 202);
    let a = sc.admin;
    for (method, path) in [("GET", "/outbox"), ("POST", "/outbox/1/drop")] {
        let (status, _, body) =
            admin_request(a, method, path, &[("authorization", "Bearer anything")]).await;
        assert_eq!(status, 403, "{method} {path}");
        let v = json(&body);
        assert_eq!(v["reason"], "admin_token_not_configured");
        assert!(
            v["message"].as_str().unwrap().contains("admin.token"),
            "{v}"
        );
    }
    let (status, _, body) = admin_request(a, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("bsk_sidecar_"));
    let (status, _, _) = admin_request(a, "GET", "/healthz", &[]).await;
    assert_eq!(status, 200);
    // Browsers are refused on open paths too.
    let (status, _, _) =
        admin_request(a, "GET", "/metrics", &[("origin", "http://evil.example")]).await;
    assert_eq!(status, 403);
    // The CLI cannot act on a running sidecar without the token either.
    let (ok, _, err) = cli(&["outbox", "list", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("admin.token"), "{err}");
}

#[tokio::test]
async fn admin_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), ", max_connections: 2");
    let sc = Sidecar::start(&cfg);
    let a = sc.admin;
    // Two idle connections hold both slots (the header read timeout is 10s).
    let held = [
        TcpStream::connect(a).await.unwrap(),
        TcpStream::connect(a).await.unwrap(),
    ];
    // Connections are accepted in order: the third, over the cap, is closed unanswered.
    let mut third = TcpStream::connect(a).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(PATIENCE, third.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection over the cap was served");
    // A freed slot serves again.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let served = async {
            let s = TcpStream::connect(a).await.ok()?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let req = http::Request::get("/healthz")
                .header("host", a.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .ok()?;
            Some(sender.send_request(req).await.ok()?.status().as_u16())
        }
        .await;
        if served == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "no admin slot came free");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
