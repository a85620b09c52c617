//! `bsk-sidecar demo`: the sidecar on an embedded config, in front of an in-process
//! stand-in legacy application, with the spec's sample requests sent through it sealed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::clock::Clock;
use crate::envelope::{self, BodyShape, Layer, PeerKeys};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server;

/// The spec's published test key and IV (section 15) — for the demo only.
pub const DEMO_KEY: &str = "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W";
pub const DEMO_IV: &str = "V0ZMZO6WZ45KY2PL";

/// The embedded default configuration; `{LISTEN}` and `{APP}` are filled in at start.
pub const DEMO_CONFIG: &str = r#"
admin: { listen: 127.0.0.1:0, metrics: open }
state: { dir: /tmp/bsk-sidecar-demo }
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: { secret: "demo-jwt-secret-not-for-production", algorithms: [HS256], require_exp: true, leeway: 30s }
    aes:
      keys:
        - { key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }
    allow: [127.0.0.0/8, "::1"]
    rate: { per_second: 50, burst: 100 }
listeners:
  - name: public
    listen: "{LISTEN}"
    routes:
      - path: /bsk/landing          # API-1: browser form POST, so no address check
        from: bsk
        envelope: [form, aes]
        ip_check: false
        fresh: 10m                  # ticketNo within 10 minutes; each one accepted once
        upstream: http://{APP}/bsk/landing
      - path: /bsk/status           # API-3: passcode + JWT
        from: bsk
        envelope: [token, jwt]
        upstream: http://{APP}/bsk/status
      - path: /bsk/missed           # API-7: answer sealed back to the portal
        from: bsk
        envelope: [token, jwt]
        upstream: http://{APP}/bsk/missed
        response: { mode: seal, wrap: { status: "S", statusCode: 200 } }
"#;

/// The spec's API-1 example, with `ticketNo` set to now (IST, 17 digits).
fn api1_sample(ticket: &str) -> String {
    format!(
        r#"{{"userid":9054233544,"ticketNo":{ticket},"serviceCode":"AMD/003","name":"Arindam Ray","mobile":"9350778824","email":"arindam.ray@cmail.com","gender":"male","age":48}}"#
    )
}

/// A `ticketNo` `offset_ms` from now by `clock`.
fn ticket_now(clock: &Clock, offset_ms: i64) -> String {
    crate::calendar::unix_ms_to_ticket(clock.unix_ms_i64().saturating_add(offset_ms))
}
const API3_SAMPLE: &str = r#"{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","applicationNo":"123456"}"#;
const API7_SAMPLE: &str = r#"{"fromDate":"2022-08-01","toDate":"2022-08-11"}"#;

/// The stand-in legacy application: answers like a department portal and prints what
/// it received — plain JSON, never a ciphertext.
async fn standin_app(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let peer = req
        .headers()
        .get("x-bsk-peer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    println!(
        "  app received  {path} (X-BSK-Peer: {peer}): {}",
        String::from_utf8_lossy(&body)
    );
    let (ct, answer): (&str, String) = match path.as_str() {
        "/bsk/landing" => (
            "text/html; charset=utf-8",
            "<html><body><h1>Department service form</h1><p>Application initiated.</p></body></html>".into(),
        ),
        "/bsk/status" => (
            "application/json",
            r#"{"userId":9054233544,"ticketNo":20220811130723,"applicationStage":[{"stage":"Submitted","date":"2022-08-11"}],"statusCode":200}"#.into(),
        ),
        _ => (
            "application/json",
            r#"[{"userid":9054233544,"ticketNo":20220811050723,"serviceCode":"AMD/003","appNo":"123456","applicationStatus":3,"statusCode":200}]"#.into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(answer)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    Ok(resp)
}

async fn start_standin() -> Result<SocketAddr, DemoError> {
    let bind = |source| DemoError::Bind {
        what: "the stand-in application on 127.0.0.1".into(),
        source,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(standin_app))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// One POST on a fresh connection; returns status and body.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), DemoError> {
    let sent: Result<_, HttpError> = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::post(path)
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, content_type);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
    .await;
    sent.map_err(|source| DemoError::Http { addr, source })
}

/// Adds `iat`/`exp` claims to a JSON object, as the portal's tokens carry them.
fn with_times(clock: &Clock, json: &str) -> Vec<u8> {
    let now = clock.unix_secs();
    let inner = json.trim().trim_start_matches('{');
    format!(r#"{{"iat":{now},"exp":{},{inner}"#, now + 300).into_bytes()
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the embedded demo config does not validate:\n{}", list(.0))]
    Config(Vec<crate::config::ConfigError>),
    #[error("the embedded demo config has no peer `bsk` or no listener `public`")]
    Incomplete,
    #[error("binding {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] crate::runtime::BuildError),
    #[error("sealing a demo request: {0}")]
    Seal(#[from] envelope::Failure),
    #[error("demo request to {addr}: {source}")]
    Http { addr: SocketAddr, source: HttpError },
}

/// One demo request that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Request(#[from] http::Error),
}

fn list(errs: &[crate::config::ConfigError]) -> String {
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    lines.join("\n")
}

pub async fn run(listen: String, once: bool) -> Result<(), DemoError> {
    let app = start_standin().await?;
    let yaml = DEMO_CONFIG
        .replace("{LISTEN}", &listen)
        .replace("{APP}", &app.to_string());
    let settings = crate::config::from_yaml(&yaml, "<embedded demo config>", Path::new("."))
        .map_err(DemoError::Config)?;
    let keys = settings
        .peers
        .get("bsk")
        .map(|p| p.keys.clone())
        .ok_or(DemoError::Incomplete)?;
    let rt: Arc<Runtime> = Runtime::new(settings, Metrics::new())?;
    let bound = server::bind(&rt).await.map_err(|source| DemoError::Bind {
        what: format!("{listen} (try --listen 127.0.0.1:0)"),
        source,
    })?;
    let addr = bound.addr_of(&rt, "public").ok_or(DemoError::Incomplete)?;
    let admin = bound.admin_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(rt.clone(), bound, async move {
        let _ = stop_rx.await;
    }));

    println!("bsk-sidecar demo: sidecar on http://{addr}, stand-in department app on http://{app}");
    if let Some(a) = admin {
        println!("metrics on http://{a}/metrics\n");
    }

    let tampered = walkthrough(addr, &rt.clock, &keys).await?;

    if once {
        let _ = stop_tx.send(());
        let _ = serving.await;
        return Ok(());
    }
    try_it_yourself(addr, &rt.clock, &keys, &tampered)?;
    println!("Press Ctrl-C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop_tx.send(());
    let _ = serving.await;
    Ok(())
}

/// The five requests of the walk-through, printed as they go; returns the tampered
/// form body of step 4. Longer than most functions on purpose: it is the script a
/// newcomer reads beside the demo's output, one step after another.
async fn walkthrough(
    addr: SocketAddr,
    clock: &Clock,
    keys: &PeerKeys,
) -> Result<String, DemoError> {
    let seal = |layers: &[Layer], plain: &[u8], shape| {
        envelope::seal(layers, keys, plain, shape).map_err(DemoError::Seal)
    };
    // API-1: the portal's encrypted form post, exactly as section 15's samples build it.
    let api1 = api1_sample(&ticket_now(clock, 0));
    let landing = seal(&[Layer::Form, Layer::Aes], api1.as_bytes(), BodyShape::Form)?;
    println!("1. API-1 landing: form POST with agId + encData (AES-256-CBC)");
    step(
        addr,
        "/bsk/landing",
        landing.content_type,
        &landing.body,
        true,
        "",
    )
    .await?;

    // API-3: passcode + JWT.
    let status_req = seal(
        &[Layer::Token, Layer::Jwt],
        &with_times(clock, API3_SAMPLE),
        BodyShape::Json,
    )?;
    println!("2. API-3 status: {{passcode, token}} with an HS256 JWT");
    step(
        addr,
        "/bsk/status",
        status_req.content_type,
        &status_req.body,
        true,
        "",
    )
    .await?;

    // API-7: the answer is sealed for the portal.
    let missed = seal(
        &[Layer::Token, Layer::Jwt],
        &with_times(clock, API7_SAMPLE),
        BodyShape::Json,
    )?;
    println!("3. API-7 missed data: the app's plain answer goes back sealed");
    step(
        addr,
        "/bsk/missed",
        missed.content_type,
        &missed.body,
        true,
        "",
    )
    .await?;

    // A tampered ciphertext: refused, and the app never sees it.
    let enc = String::from_utf8_lossy(&landing.body).to_string();
    let tampered = tamper(&enc);
    let refused = "   (the app received nothing)";
    println!("4. A tampered API-1 ciphertext");
    let form = "application/x-www-form-urlencoded";
    step(
        addr,
        "/bsk/landing",
        form,
        tampered.as_bytes(),
        false,
        refused,
    )
    .await?;

    // The same API-1 request captured and sent again.
    println!("5. The first API-1 request, replayed");
    step(
        addr,
        "/bsk/landing",
        landing.content_type,
        &landing.body,
        false,
        refused,
    )
    .await?;
    Ok(tampered)
}

/// Prints requests to try by hand: one not yet sent (accepted once), the tampered one.
fn try_it_yourself(
    addr: SocketAddr,
    clock: &Clock,
    keys: &PeerKeys,
    tampered: &str,
) -> Result<(), DemoError> {
    let seal = |layers: &[Layer], plain: &[u8], shape| {
        envelope::seal(layers, keys, plain, shape).map_err(DemoError::Seal)
    };
    // A request the demo has not sent, so its first use is accepted.
    let fresh = seal(
        &[Layer::Form, Layer::Aes],
        api1_sample(&ticket_now(clock, 1)).as_bytes(),
        BodyShape::Form,
    )?;
    let enc_data = form_value(&String::from_utf8_lossy(&fresh.body), "encData").unwrap_or_default();
    println!("Still serving. Try it yourself (the first is accepted once, within 10 minutes):");
    println!("  curl -i http://{addr}/bsk/landing --data-urlencode agId=BSK --data-urlencode 'encData={enc_data}'");
    println!("  curl -i http://{addr}/bsk/landing --data-urlencode agId=BSK --data-urlencode 'encData={}'", form_value(tampered, "encData").unwrap_or_default());
    println!("  bsk-sidecar seal --envelope form,aes --agid BSK --key {DEMO_KEY} --iv {DEMO_IV} <<< '{{\"userid\":8527419636,\"ticketNo\":20221202153322882}}'");
    Ok(())
}

/// Sends one demo request and prints what went out (when `show_sent`) and what came back.
async fn step(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
    show_sent: bool,
    remark: &str,
) -> Result<(), DemoError> {
    if show_sent {
        println!("  caller sent   {}", String::from_utf8_lossy(body));
    }
    let (status, answer) = post(addr, path, content_type, None, body.to_vec()).await?;
    println!(
        "  came back     {status}: {}{remark}\n",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

fn form_value(body: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Flips one base64 character in the middle of `encData`.
fn tamper(form_body: &str) -> String {
    let enc = form_value(form_body, "encData").unwrap_or_default();
    let mut chars: Vec<char> = enc.chars().collect();
    let i = chars.len() / 2;
    if let Some(c) = chars.get_mut(i) {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    let enc: String = chars.into_iter().collect();
    form_urlencoded::Serializer::new(String::new())
        .append_pair("agId", "BSK")
        .append_pair("encData", &enc)
        .finish()
}
