//! `bsk-sidecar probe`, the real binary: against the sidecar fronting a stand-in
//! application every check passes (over http and https); against a deliberately weak
//! endpoint — distinct envelope errors, `alg: none` accepted, replays taken — each is a
//! named FAIL and the exit status is non-zero. Every request goes to 127.0.0.1.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Output};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use bsk_sidecar::envelope::aes::{self, AesKey};
use bsk_sidecar::envelope::jwt::{self, JwtKey};
use bsk_sidecar::secret::Secret;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsk-sidecar");

const CONFIG: &str = r#"
admin: { listen: "off" }
limits:
  per_ip_rate: { per_second: 1000, burst: 1000 }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
{TLS}
    routes:
      - path: /bsk/landing
        from: bsk
        envelope: [form, aes]
        ip_check: false
        schema: api1
        upstream: http://{APP}/bsk/landing
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt]
        schema: api3
        upstream: http://{APP}/bsk/status
"#;

async fn probe(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).arg("probe").args(&args).output())
        .await
        .expect("join")
        .expect("run bsk-sidecar probe")
}

fn args(url: String, rest: &[&str]) -> Vec<String> {
    std::iter::once(url)
        .chain(rest.iter().map(|s| s.to_string()))
        .collect()
}

const AES_FLAGS: [&str; 6] = ["--envelope", "form,aes", "--key", SPEC_KEY, "--iv", SPEC_IV];
const JWT_FLAGS: [&str; 6] = [
    "--envelope",
    "token,jwt",
    "--jwt-secret",
    JWT_SECRET,
    "--passcode",
    PASSCODE,
];

/// Lines of a text report, checked: nothing but `ok` apart from the transport line.
fn all_ok(out: &Output, names: &[&str]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines().filter(|l| !l.contains(" checks: ")) {
        assert!(
            line.starts_with("ok ") || line.starts_with("WARN transport"),
            "{line}\n{stdout}"
        );
    }
    for name in names {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("ok   {name}:"))),
            "no ok line for {name}:\n{stdout}"
        );
    }
    assert!(stdout.contains(" 0 FAIL"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_check_passes_against_the_sidecar() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sidecar = Sidecar::start(
        CONFIG,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{TLS}", String::new()),
            ("{APP}", app.addr.to_string()),
        ],
    )
    .await;
    let base = format!("http://{}", sidecar.addr);

    let out = probe(args(format!("{base}/bsk/landing"), &AES_FLAGS)).await;
    all_ok(
        &out,
        &[
            "sealed request accepted",
            "refused: tampered ciphertext",
            "refused: bad padding",
            "refused: wrong key",
            "refused: truncated base64",
            "refused: non-JSON plaintext",
            "padding oracle",
            "replay",
            "stale",
            "2 MiB body",
            "5,000-deep JSON",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("WARN transport: sent plain http://"),
        "{stdout}"
    );
    // Only the accepted request and the replay's first copy reached the application.
    assert_eq!(app.count(), 2, "{:?}", app.recorded());

    let mut flags = JWT_FLAGS.to_vec();
    flags.extend(["--api", "api3", "--json"]);
    let started = std::time::Instant::now();
    let out = probe(args(format!("{base}/bsk/status"), &flags)).await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["fail"], 0, "{report:#}");
    // At most 10 requests a second: n requests cannot start within less than (n-1)/10 s.
    let sent = report["requests"].as_u64().unwrap();
    assert!(
        took >= std::time::Duration::from_millis(100 * (sent - 1)),
        "{sent} requests in {took:?}"
    );
    assert_eq!(report["api"], "api3");
    let checks = report["checks"].as_array().unwrap();
    for name in [
        "passcode: wrong",
        "passcode: missing",
        "passcode: numeric",
        "jwt: alg none",
        "jwt: alg None",
        "jwt: alg NONE",
        "jwt: alg nOnE",
        "jwt: HS512",
        "jwt: RS256 header",
        "jwt: wrong secret",
        "jwt: expired",
        "jwt: no exp",
        "replay",
        "stale",
    ] {
        let c = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {report:#}"));
        assert_eq!(c["verdict"], "ok", "{c}");
    }
    assert!(report["requests"].as_u64().unwrap() <= 100);
    // Nothing the probe sends reveals the keys it holds.
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in [PASSCODE, JWT_SECRET] {
        assert!(!text.contains(secret), "{text}");
    }
    assert_eq!(app.count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_probe_reports_the_certificate() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let tls = format!(
        "    tls: {{ cert: {}, key: {} }}",
        crt.display(),
        key.display()
    );
    let sidecar = Sidecar::start(
        CONFIG,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{TLS}", tls),
            ("{APP}", app.addr.to_string()),
        ],
    )
    .await;
    let url = format!("https://localhost:{}/bsk/landing", sidecar.addr.port());
    let mut flags = AES_FLAGS.to_vec();
    let ca = crt.display().to_string();
    flags.extend(["--ca", &ca]);
    let out = probe(args(url.clone(), &flags)).await;
    all_ok(
        &out,
        &["transport", "sealed request accepted", "padding oracle"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("TLS 1.3, chain of 1 certificate(s) verified, leaf certificate expires in"),
        "{stdout}"
    );

    // Without the certificate's issuer trusted, the handshake fails: a FAIL, exit 1.
    let out = probe(args(url, &AES_FLAGS)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.starts_with("FAIL transport: sent a TLS handshake"),
        "{stdout}"
    );
}

/// A department endpoint written the way the probe exists to catch: it names each AES
/// failure, accepts a token whose header says `alg: none`, and keeps no replay record.
async fn weak_endpoint(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let answer = |status: u16, text: &str| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text.to_string())))
            .unwrap())
    };
    if path == "/landing" {
        let enc = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "encData")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let Ok(ct) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &enc)
        else {
            return answer(400, r#"{"error":"invalid base64"}"#);
        };
        let key = AesKey::new(SPEC_KEY.as_bytes(), SPEC_IV.as_bytes()).unwrap();
        return match aes::decrypt_raw(&key, &ct) {
            Err(_) => answer(500, r#"{"error":"javax.crypto.BadPaddingException"}"#),
            Ok(p) if serde_json::from_slice::<serde_json::Value>(&p).is_err() => {
                answer(400, r#"{"error":"invalid JSON"}"#)
            }
            Ok(_) => answer(200, r#"{"statusCode":200}"#),
        };
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let token = v["token"].as_str().unwrap_or_default();
    let header = token.split('.').next().unwrap_or_default();
    let header = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
        .unwrap_or_default();
    let alg_none = String::from_utf8_lossy(&header)
        .to_ascii_lowercase()
        .contains(r#""alg":"none""#);
    let key = JwtKey::new(Secret::new(JWT_SECRET.as_bytes().to_vec()));
    if v["passcode"] != PASSCODE {
        return answer(401, r#"{"error":"passcode"}"#);
    }
    if alg_none || jwt::verify(&key, token, unix_now() as u64).is_ok() {
        answer(200, r#"{"statusCode":200}"#)
    } else {
        answer(401, r#"{"error":"token"}"#)
    }
}

async fn start_weak() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(weak_endpoint)),
            );
        }
    });
    addr
}

fn verdicts(out: &Output) -> Vec<(String, String, String)> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["verdict"].as_str().unwrap().to_string(),
                c["got"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn verdict_of<'a>(v: &'a [(String, String, String)], name: &str) -> (&'a str, &'a str) {
    v.iter()
        .find(|c| c.0 == name)
        .map(|c| (c.1.as_str(), c.2.as_str()))
        .unwrap_or_else(|| panic!("no check {name}: {v:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_weak_endpoint_fails_by_name() {
    let weak = start_weak().await;

    let mut flags = AES_FLAGS.to_vec();
    flags.push("--json");
    let out = probe(args(format!("http://{weak}/landing"), &flags)).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = verdicts(&out);
    let (verdict, got) = verdict_of(&v, "padding oracle");
    assert_eq!(verdict, "FAIL");
    // A wrong key fails mostly, but not always, on the padding: only bad padding is sure.
    assert!(
        got.split("; ")
            .any(|g| g.contains("bad padding")
                && g.ends_with("-> 500 javax.crypto.BadPaddingException")),
        "{got}"
    );
    assert!(
        got.contains("truncated base64 -> 400 invalid base64"),
        "{got}"
    );
    // A bad padding answered 500 is no clean refusal either.
    assert_eq!(verdict_of(&v, "refused: bad padding").0, "FAIL");
    assert_eq!(
        verdict_of(&v, "replay"),
        ("FAIL", "ACCEPTED: 200 (18 bytes application/json)")
    );
    assert_eq!(verdict_of(&v, "stale").0, "FAIL");
    assert_eq!(verdict_of(&v, "sealed request accepted").0, "ok");

    let mut flags = JWT_FLAGS.to_vec();
    flags.extend(["--api", "api3", "--json"]);
    let out = probe(args(format!("http://{weak}/status"), &flags)).await;
    assert_eq!(out.status.code(), Some(1));
    let v = verdicts(&out);
    for spelling in ["none", "None", "NONE", "nOnE"] {
        assert_eq!(verdict_of(&v, &format!("jwt: alg {spelling}")).0, "FAIL");
    }
    for refused in [
        "jwt: HS512",
        "jwt: wrong secret",
        "jwt: expired",
        "passcode: wrong",
        "passcode: numeric",
    ] {
        assert_eq!(verdict_of(&v, refused).0, "ok", "{refused}");
    }
    assert_eq!(verdict_of(&v, "replay").0, "FAIL");

    // The text report says the same in one line per check.
    flags.pop();
    let out = probe(args(format!("http://{weak}/status"), &flags)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL jwt: alg none: sent alg \"none\", no signature -> ACCEPTED: 200"),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().contains(" FAIL ("),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_stays_within_its_bounds() {
    let out = probe(args(
        "http://127.0.0.1:9/x".into(),
        &["--rate", "11", "--key", SPEC_KEY, "--iv", SPEC_IV],
    ))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate must be from 1 to 10"));
    let out = probe(args(
        "ftp://127.0.0.1/x".into(),
        &["--key", SPEC_KEY, "--iv", SPEC_IV],
    ))
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an http:// or https:// URL"));
}
