//! The status page (`GET /` on the admin listener): behind `admin.token` (HTTP Basic with
//! the token as password), HTML with no external assets, and what an operator needs on
//! it — checked in the served HTML and, as a person sees it, in headless Chromium.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::Method;
use http_body_util::Full;

use bsk_sidecar::envelope::{BodyShape, Layer};
use support::*;

const TOKEN: &str = "status-page-admin-token";

async fn sidecar() -> (Sidecar, Upstream) {
    let app = Upstream::start(Behaviour::Echo).await;
    let closed = closed_port().await;
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0, token: "{TOKEN}" }}
peers:
  bsk:
    agid: BSK
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
    allow: [127.0.0.0/8, localhost]
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /bsk/landing, from: bsk, envelope: [aes], fresh: off, replay: false, upstream: "http://{app}/landing" }}
      - {{ path: /bsk/down, from: bsk, envelope: [aes], fresh: off, upstream: "http://{closed}/down" }}
"#,
        app = app.addr
    );
    let sc = Sidecar::start(&yaml, &[]).await;
    let to = sc.addr;
    let sealed = seal(
        &[Layer::Aes],
        &sc.keys("bsk"),
        br#"{"a":1}"#,
        BodyShape::Json,
    );
    for _ in 0..3 {
        let ok = send(to, sealed_post(to, "/bsk/landing", &sealed)).await;
        assert_eq!(ok.status, 200, "{}", ok.text());
    }
    let down = send(to, sealed_post(to, "/bsk/down", &sealed)).await;
    assert_eq!(down.status, 502, "{}", down.text());
    let refused = send(
        to,
        post(to, "/bsk/landing", Some("text/plain"), "not sealed"),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    (sc, app)
}

fn basic(token: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("operator:{token}"));
    format!("Basic {b64}")
}

async fn get_page(sc: &Sidecar, auth: Option<&str>) -> Answer {
    let admin = sc.admin.unwrap();
    let mut req = request(Method::GET, admin, "/");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    send(admin, req.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn the_page_needs_the_token_and_shows_what_an_operator_needs() {
    let (sc, _app) = sidecar().await;

    let anonymous = get_page(&sc, None).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Basic")));
    assert_eq!(get_page(&sc, Some(&basic("wrong"))).await.status, 401);

    let page = get_page(&sc, Some(&basic(TOKEN))).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = page.text();
    // Nothing loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "<link", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the page");
    }
    for expected in [
        concat!("bsk-sidecar ", env!("CARGO_PKG_VERSION")),
        "Config loaded at ",
        "public on 127.0.0.1:",
        "<td>/bsk/landing</td><td>4 (3 forwarded, 1 refused, 0 upstream errors)</td><td>bad_envelope 1</td>",
        "<td>/bsk/down</td><td>1 (0 forwarded, 0 refused, 1 upstream errors)</td>",
        "Allowlisted DNS names",
        "<td>localhost</td>",
        "<h2>Replay cache</h2><p>",
        // The page reloads itself where JavaScript runs; the CSP allows that script only.
        "<script>setTimeout(function(){location.reload()},10000);</script>",
    ] {
        assert!(html.contains(expected), "`{expected}` not on the page:\n{html}");
    }
    let landing = html.split("<td>/bsk/landing</td>").nth(1).unwrap();
    let landing = landing.split("</tr>").next().unwrap();
    assert!(landing.contains("last success 20"), "{landing}");
    assert!(landing.contains("last failure <span>—</span>"), "{landing}");
    let down = html.split("<td>/bsk/down</td>").nth(1).unwrap();
    let down = down.split("</tr>").next().unwrap();
    assert!(
        down.contains("last failure <span class=\"bad\">20"),
        "{down}"
    );
}

/// Whether `tool` runs; a missing tool panics under CI, else the test is skipped.
fn require(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is missing: install Debian's `chromium` (packaging/ci-check.sh does)");
    }
    eprintln!(
        "SKIPPED: {tool} is missing; apt-get install chromium. Under CI=true this is a failure."
    );
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn headless_chromium_renders_the_page() {
    if !require("chromium") {
        return;
    }
    let (sc, _app) = sidecar().await;
    let admin = sc.admin.unwrap();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://operator:{TOKEN}@{admin}/");
    let shot = std::env::var("BSK_STATUS_SCREENSHOT").ok();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
        match &shot {
            // Set BSK_STATUS_SCREENSHOT=/tmp/status.png to look at the page.
            Some(path) => cmd.args(["--window-size=1280,1100", &format!("--screenshot={path}")]),
            None => cmd.arg("--dump-dom"),
        };
        cmd.arg(&url).output().unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium finished")
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    if std::env::var("BSK_STATUS_SCREENSHOT").is_ok() {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // Chromium rendered the page itself, behind the token: its title and tables.
    assert!(
        dom.contains("<title>bsk-sidecar status</title>"),
        "{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "Listeners and routes",
        "/bsk/landing",
        "3 forwarded, 1 refused",
        "bad_envelope 1",
        "1 upstream errors",
        "Replay cache",
    ] {
        assert!(dom.contains(expected), "`{expected}` not rendered:\n{dom}");
    }
}
