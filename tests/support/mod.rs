//! Shared pieces of the integration tests: a stand-in legacy application that records
//! what reaches it, the sidecar started in-process on ephemeral loopback ports, a client
//! that can choose its loopback source address, and helpers that seal requests the way a
//! peer would.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

#[path = "../port/mod.rs"]
pub mod port;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use bsk_sidecar::envelope::{self, jwt, BodyShape, Layer, PeerKeys};
use bsk_sidecar::metrics::Metrics;
use bsk_sidecar::runtime::Runtime;
use bsk_sidecar::server;

/// The spec's published test key and IV (section 15).
pub const SPEC_KEY: &str = "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W";
pub const SPEC_IV: &str = "V0ZMZO6WZ45KY2PL";
/// The spec's test plaintext and its true ciphertext (`spec/NOTES.md`).
pub const SPEC_PLAIN: &str = r#"{"userid":"8527419636","ticketno":"20221202153322882","citizenmobile":"9963258963","citizenname":"Anupam Ghosh"}"#;
pub const SPEC_CIPHER: &str = "m4p3CxxkyshZk6hQdSi509Uu3Gn8i4MXIz/uqgSl40FfH0Hv7M/ThZj3YnAiVLdmuQ4DdGEPVLYtOihNsC2c59tkK97qagxo9+rX6hWJem/AilzVNBTsN206liJKiAaoFAKfmaxFAFo/UmGTrVExKI428RouVxqyechhX0OyIDg=";
/// A payload with a 17-digit `ticketNo` (above 2^53): must travel byte for byte.
pub const TICKET_PLAIN: &str = r#"{"userid":8527419636,"ticketNo":20221202153322882,"serviceCode":"AMD/003","name":"Anupam Ghosh"}"#;

/// Credentials of the test peer `bsk` in [`PEER_BSK`].
pub const PASSCODE: &str = "376423";
pub const JWT_SECRET: &str = "integration-test-jwt-secret-0123456789";

/// The `bsk` peer block every ingress config starts from (indented for `peers:`).
pub const PEER_BSK: &str = r#"
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: { secret: "integration-test-jwt-secret-0123456789", algorithms: [HS256], require_exp: true, leeway: 5s }
    aes:
      keys:
        - { key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }
    allow: [127.0.0.0/8]
"#;

/// Upper bound for anything a test waits on; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until `check` holds, looking again every 20 ms; fails naming `what` once
/// [`PATIENCE`] has passed.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the tests run under CI (`CI` set and not `0`/`false`): a missing tool is then a
/// failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

// ---------------------------------------------------------------------------------------
// The stand-in legacy application.

/// One request as the application received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the stand-in answers.
#[derive(Clone)]
pub enum Behaviour {
    /// 200 `application/json` with the received body.
    Echo,
    /// A fixed answer.
    Fixed {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Echo, after this long (longer than the route's `upstream_timeout` for a 504).
    Delay(Duration),
    /// Echo, once [`Upstream::release`] has been called for this request.
    Gated,
}

pub struct Upstream {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    count: watch::Receiver<usize>,
    gate: Arc<Semaphore>,
}

impl Upstream {
    pub async fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let gate = Arc::new(Semaphore::new(0));
        {
            let recorded = recorded.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let recorded = recorded.clone();
                    let count_tx = count_tx.clone();
                    let gate = gate.clone();
                    let behaviour = behaviour.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let recorded = recorded.clone();
                            let count_tx = count_tx.clone();
                            let gate = gate.clone();
                            let behaviour = behaviour.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.map(|c| c.to_bytes());
                                let body = body.unwrap_or_default();
                                let rec = Recorded {
                                    method: parts.method,
                                    path: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body: body.clone(),
                                };
                                let n = {
                                    let mut all = recorded.lock().unwrap();
                                    all.push(rec);
                                    all.len()
                                };
                                count_tx.send_replace(n);
                                Ok::<_, Infallible>(answer(&behaviour, &gate, body).await)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        }
        Upstream {
            addr,
            recorded,
            count,
            gate,
        }
    }

    /// Everything received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    /// The only request received; panics unless exactly one arrived.
    pub fn only(&self) -> Recorded {
        let all = self.recorded();
        assert_eq!(all.len(), 1, "upstream received {} requests", all.len());
        all[0].clone()
    }

    pub fn clear(&self) {
        self.recorded.lock().unwrap().clear();
    }

    /// Waits until at least `n` requests have been received (bounded by [`PATIENCE`]).
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.count.clone();
        tokio::time::timeout(PATIENCE, rx.wait_for(|c| *c >= n))
            .await
            .expect("upstream never received the request")
            .expect("stand-in stopped");
    }

    /// Lets one [`Behaviour::Gated`] request answer.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }
}

async fn answer(behaviour: &Behaviour, gate: &Semaphore, body: Bytes) -> Response<Full<Bytes>> {
    let json = |body: Bytes| {
        let mut r = Response::new(Full::new(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    };
    match behaviour {
        Behaviour::Echo => json(body),
        Behaviour::Fixed {
            status,
            content_type,
            body,
        } => {
            let mut r = Response::new(Full::new(Bytes::from(body.clone())));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            r
        }
        Behaviour::Delay(d) => {
            tokio::time::sleep(*d).await;
            json(body)
        }
        Behaviour::Gated => {
            gate.acquire().await.expect("gate open").forget();
            json(body)
        }
    }
}

/// An address on which nothing listens (and none of the tests' own sockets will).
pub async fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port::unclaimed()))
}

// ---------------------------------------------------------------------------------------
// The sidecar, in-process.

pub struct Sidecar {
    pub rt: Arc<Runtime>,
    /// The `public` listener.
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    bound_addrs: Vec<(String, SocketAddr)>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// The state directory (replay cache, outbox) when the config names none.
    _state: Option<tempfile::TempDir>,
}

impl Sidecar {
    /// Starts the sidecar on `yaml` after replacing each `(placeholder, value)`.
    pub async fn start(yaml: &str, vars: &[(&str, String)]) -> Sidecar {
        let mut text = yaml.to_string();
        for (k, v) in vars {
            text = text.replace(k, v);
        }
        // Replay protection is on by default and journals to the state directory: a test
        // that does not name one gets its own.
        let state = if text.lines().any(|l| l.starts_with("state:")) {
            None
        } else {
            let dir = tempfile::tempdir().expect("state dir");
            text = format!("state: {{ dir: {:?} }}\n{text}", dir.path());
            Some(dir)
        };
        let settings = bsk_sidecar::config::from_yaml(&text, "test.yaml", Path::new("."))
            .unwrap_or_else(|errs| {
                let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                panic!("test config refused:\n{}\n---\n{text}", msgs.join("\n"))
            });
        let rt = Runtime::new(settings, Metrics::new()).expect("runtime");
        let bound = server::bind(&rt).await.expect("bind sidecar");
        let addr = bound.addr_of(&rt, "public").expect("listener `public`");
        let admin = bound.admin_addr();
        let bound_addrs = rt
            .listeners
            .iter()
            .filter_map(|l| bound.addr_of(&rt, &l.name).map(|a| (l.name.clone(), a)))
            .collect();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::serve(rt.clone(), bound, async {
            let _ = stop_rx.await;
        }));
        Sidecar {
            rt,
            addr,
            admin,
            bound_addrs,
            stop: Some(stop),
            handle: Some(handle),
            _state: state,
        }
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.bound_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// The keys of peer `name`, to seal requests as that peer.
    pub fn keys(&self, name: &str) -> PeerKeys {
        self.rt.settings.peers[name].keys.clone()
    }

    /// Triggers graceful shutdown (stop accepting, drain).
    pub fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (bounded) for `serve` to return after [`Sidecar::trigger_shutdown`].
    pub async fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(PATIENCE, h)
                .await
                .expect("sidecar did not finish draining")
                .expect("serve task panicked");
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

/// An answer from the sidecar.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the spec's error shape with this status and public reason; returns the body.
    pub fn assert_error(&self, status: u16, reason: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["statusCode"], status, "{v}");
        assert_eq!(v["reason"], reason, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        let id = v["requestId"].as_str().expect("requestId");
        assert!(!id.is_empty());
        assert_eq!(self.header("x-request-id"), Some(id));
        v
    }
}

/// A connection from loopback source address `from` (e.g. 127.0.0.2) to `to`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Sends `req` on a fresh connection from `from`. `Err` when the connection fails before
/// an HTTP answer arrives.
pub async fn send_from(
    from: IpAddr,
    to: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let exchange = async {
        let stream = connect_from(from, to).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .map_err(|_| "no answer in time")?
}

/// Sends `req` from 127.0.0.1 and expects an HTTP answer.
pub async fn send(to: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    send_from(LOCAL, to, req).await.expect("HTTP exchange")
}

pub const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
pub const LOCAL2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
pub const LOCAL3: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// A request builder with `Host` set.
pub fn request(method: Method, to: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, to.to_string())
}

/// A POST of `body` with content type `ct` (none when `None`).
pub fn post(
    to: SocketAddr,
    path: &str,
    ct: Option<&str>,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = request(Method::POST, to, path);
    if let Some(ct) = ct {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// A request sealed by [`envelope::seal`], as an HTTP request to `path`.
pub fn sealed_post(to: SocketAddr, path: &str, sealed: &envelope::Sealed) -> Request<Full<Bytes>> {
    let mut b = request(Method::POST, to, path).header(header::CONTENT_TYPE, sealed.content_type);
    if let Some(auth) = &sealed.authorization {
        b = b.header(header::AUTHORIZATION, auth);
    }
    b.body(Full::new(Bytes::from(sealed.body.clone()))).unwrap()
}

/// Plain GET on the admin listener.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Answer {
    send(
        admin,
        request(Method::GET, admin, path)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// A raw HTTP/1.1 exchange: writes `head` (and `body` in one go), then reads one answer.
/// For what a well-behaved client library will not send.
pub async fn raw_exchange(to: SocketAddr, bytes: &[u8]) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(to).await?;
    stream.write_all(bytes).await?;
    read_answer(&mut stream).await
}

/// Reads one HTTP/1.1 answer (head + `Content-Length` body) from `stream`, bounded by
/// [`PATIENCE`].
pub async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Answer> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before an answer",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let code: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut headers = HeaderMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            if let Some((k, v)) = line.split_once(':') {
                headers.append(
                    header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                    header::HeaderValue::from_str(v.trim()).unwrap(),
                );
            }
        }
        let len: usize = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
        Ok(Answer {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
            headers,
            body: Bytes::from(body),
        })
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

// ---------------------------------------------------------------------------------------
// Sealing as a peer would.

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `json` (an object) with `"iat"` and `"exp"` claims added in front, relative to now.
pub fn with_times(json: &str) -> String {
    let now = unix_now();
    with_claims(json, &format!(r#""iat":{now},"exp":{}"#, now + 300))
}

/// `json` (an object) with `claims` (e.g. `"exp":1`) inserted in front of its fields.
pub fn with_claims(json: &str, claims: &str) -> String {
    let inner = json.trim().strip_prefix('{').expect("a JSON object");
    if inner.trim_start().starts_with('}') {
        format!("{{{claims}}}")
    } else {
        format!("{{{claims},{inner}")
    }
}

/// Seals `plain` for `keys` in `layers`.
pub fn seal(layers: &[Layer], keys: &PeerKeys, plain: &[u8], shape: BodyShape) -> envelope::Sealed {
    envelope::seal(layers, keys, plain, shape).expect("seal")
}

/// AES-256-CBC + PKCS#7 with the spec's encoding: standard base64.
pub fn aes_b64(key: &str, iv: &str, plain: &[u8]) -> String {
    use cbc::cipher::block_padding::Pkcs7;
    use cbc::cipher::{BlockEncryptMut, KeyIvInit};
    let ct = cbc::Encryptor::<aes::Aes256>::new(key.as_bytes().into(), iv.as_bytes().into())
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    STANDARD.encode(ct)
}

/// AES-256-CBC with PHP-style zero padding (no PKCS#7), standard base64.
pub fn aes_zero_padded_b64(key: &str, iv: &str, plain: &[u8]) -> String {
    use cbc::cipher::block_padding::NoPadding;
    use cbc::cipher::{BlockEncryptMut, KeyIvInit};
    let mut padded = plain.to_vec();
    while padded.len() % 16 != 0 {
        padded.push(0);
    }
    let ct = cbc::Encryptor::<aes::Aes256>::new(key.as_bytes().into(), iv.as_bytes().into())
        .encrypt_padded_vec_mut::<NoPadding>(&padded);
    STANDARD.encode(ct)
}

/// Decodes standard base64.
pub fn b64_decode(s: &str) -> Vec<u8> {
    STANDARD.decode(s).expect("base64")
}

pub fn b64_encode(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// A compact JWS over exactly `header_json` and `payload`, signed with `secret` under
/// `alg` (`None` leaves the signature empty, as an `alg: none` token has it).
pub fn raw_jwt(
    header_json: &str,
    payload: &[u8],
    secret: &str,
    alg: Option<jsonwebtoken::Algorithm>,
) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = match alg {
        Some(alg) => jsonwebtoken::crypto::sign(
            signing_input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            alg,
        )
        .expect("sign"),
        None => String::new(),
    };
    format!("{signing_input}.{sig}")
}

/// An HS256 token over `payload` with the test peer's secret.
pub fn hs256(payload: &str) -> String {
    raw_jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        payload.as_bytes(),
        JWT_SECRET,
        Some(jsonwebtoken::Algorithm::HS256),
    )
}

/// The section 11 body `{"passcode": ..., "token": ...}`.
pub fn token_body(passcode: &str, token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "passcode": passcode, "token": token })).unwrap()
}

/// A JWT key like the test peer's, for opening what the sidecar sealed (its response
/// tokens carry no `exp`, as the application's answer has none).
pub fn response_jwt_key() -> jwt::JwtKey {
    let mut k = jwt::JwtKey::new(bsk_sidecar::secret::Secret::new(JWT_SECRET));
    k.require_exp = false;
    k
}

/// A urlencoded form body; `enc` is percent-encoded as a correct sender does.
pub fn form_body(agid: &str, enc: &str) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("agId", agid)
        .append_pair("encData", enc)
        .finish()
        .into_bytes()
}

/// `requestId` replaced by a fixed marker, so answers to different requests compare.
pub fn without_request_id(body: &[u8], id: &str) -> Vec<u8> {
    String::from_utf8_lossy(body)
        .replace(id, "<request-id>")
        .into_bytes()
}

// ---------------------------------------------------------------------------------------
// The real binary.

/// Starts `bsk-sidecar run --config CONFIG` and returns it with the address its `public`
/// listener bound (read from its log, so the config may use port 0).
pub fn spawn_sidecar(config: &Path) -> (std::process::Child, SocketAddr) {
    let (child, addr, _log) = spawn_sidecar_logging(config);
    (child, addr)
}

/// [`spawn_sidecar`] at log level `info`, with the lines it logs after the `listening`
/// line, one by one, as they reach its stderr.
pub fn spawn_sidecar_logging(
    config: &Path,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    spawn_sidecar_logging_as(config, "human")
}

/// [`spawn_sidecar_logging`] with `--log-format FORMAT` (`human` or `json`).
pub fn spawn_sidecar_logging_as(
    config: &Path,
    format: &str,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_bsk-sidecar"))
        .args(["--log-format", format, "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bsk-sidecar");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (listening, addr) = std::sync::mpsc::channel();
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end whether or not anyone listens: a full pipe would stall the
        // sidecar's log.
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(" listening ") && line.contains("listener=public") {
                if let Some(a) = line.split("addr=").nth(1) {
                    let _ = listening.send(a.trim().to_string());
                }
            } else if line.contains(r#""message":"listening""#)
                && line.contains(r#""listener":"public""#)
            {
                let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                let _ = listening.send(json["addr"].as_str().unwrap_or_default().to_string());
            } else {
                let _ = lines.send(line);
            }
        }
    });
    let addr = addr
        .recv_timeout(PATIENCE)
        .expect("no `listening` line")
        .parse()
        .expect("a listening address");
    (child, addr, log)
}
