//! Pieces of the egress integration tests: a test PKI made with rcgen, a remote peer
//! (the BSK portal stand-in) serving HTTPS on loopback that opens what it receives and
//! answers sealed, the real `bsk-sidecar` binary as a child process whose bound ports
//! are read from its log, and clients for the application's and the portal's side.
#![allow(dead_code)]

#[path = "../port/mod.rs"]
pub mod port;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use bsk_sidecar::envelope::{self, jwt::JwtKey, BodyShape, Incoming, Layer, PeerKeys};
use bsk_sidecar::secret::Secret;

/// Upper bound on anything a test waits for; reached only when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub const PASSCODE: &str = "376423";
/// `admin.token` of [`config`]: the outbox endpoints and the CLI need it.
pub const ADMIN_TOKEN: &str = "admin-token-for-egress-tests";
pub const JWT_SECRET: &str = "egress-integration-jwt-secret-0123456789";
pub const STACK: [Layer; 2] = [Layer::Token, Layer::Jwt];

/// The keys both sides share (the sidecar's `peers.bsk`, and the portal stand-in).
pub fn keys() -> PeerKeys {
    let mut jwt = JwtKey::new(Secret::new(JWT_SECRET));
    jwt.require_exp = true;
    jwt.leeway_secs = 5;
    PeerKeys {
        agid: "BSK".into(),
        passcode: Some(Secret::new(PASSCODE)),
        jwt: Some(jwt),
        aes: Vec::new(),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seals `plain` as the portal would, with `iat`/`exp` (the peer requires `exp`).
pub fn seal(plain: &[u8]) -> envelope::Sealed {
    let now = unix_now();
    envelope::seal_timed(
        &STACK,
        &keys(),
        plain,
        BodyShape::Json,
        Some((now, now + 300)),
    )
    .expect("seal")
}

/// Opens what the sidecar sealed (a request, or an answer).
pub fn open(content_type: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
    open_with(&keys(), content_type, body)
}

/// Opens an API-7 answer: a JSON array is not a claims object, so it carries no `exp`.
pub fn open_array(content_type: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut k = keys();
    if let Some(j) = k.jwt.as_mut() {
        j.require_exp = false;
    }
    open_with(&k, content_type, body)
}

fn open_with(keys: &PeerKeys, content_type: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
    let req = Incoming {
        content_type,
        authorization: None,
        passcode_header: None,
        body,
    };
    let stack = envelope::Stack::new(&STACK).map_err(|p| p.join("; "))?;
    envelope::open(&stack, keys, &req, unix_now())
        .map(|o| o.plain)
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// PKI

/// A CA made at test time, with a server certificate for 127.0.0.1 / localhost.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: Arc<PrivateKeyDer<'static>>,
    pub ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "bsk-sidecar egress test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");

        let mut s = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        s.distinguished_name
            .push(DnType::CommonName, "portal stand-in");
        s.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("key");
        let cert = s.signed_by(&key, &ca).expect("sign");
        let server_key =
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key pem");
        // A client certificate the sidecar can present (mTLS), written as PEM files.
        let mut c = CertificateParams::new(Vec::<String>::new()).expect("client params");
        c.distinguished_name
            .push(DnType::CommonName, "department sidecar");
        c.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let ckey = KeyPair::generate().expect("key");
        let ccert = c.signed_by(&ckey, &ca).expect("sign client");
        std::fs::write(dir.path().join("client.crt"), ccert.pem()).expect("write");
        std::fs::write(dir.path().join("client.key"), ckey.serialize_pem()).expect("write");
        Pki {
            ca_der: ca.der().clone(),
            dir,
            server_chain: vec![cert.der().clone()],
            server_key: Arc::new(server_key),
        }
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

// ---------------------------------------------------------------------------------------
// The remote peer (the portal stand-in).

/// One request as the peer opened it.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// The request's headers as the peer got them.
    pub headers: http::HeaderMap,
    pub plain: Vec<u8>,
    pub at: Instant,
}

/// How the peer answers.
#[derive(Clone)]
pub enum Answer {
    /// 200 with `{"appNo":…,"responseStatus":"Success","statusCode":200}`, sealed.
    SealedOk,
    /// This status with a plain JSON body.
    Status(u16),
    /// `SealedOk` after this long.
    Slow(Duration),
}

struct PeerState {
    received: Mutex<Vec<Received>>,
    count: watch::Sender<usize>,
    answer: Mutex<Answer>,
    /// Tickets answered 400 (a push the peer refuses for good).
    refuse: Mutex<Vec<String>>,
}

/// A socket bound to 127.0.0.1:`port` (0: any free port) that never listens: it holds
/// the port (`TcpListener::bind` elsewhere cannot take it, nor can an outgoing connection
/// use it as its own) while a connection to it is refused. `None` when the port is taken.
fn reserve(port: u16) -> Option<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    // As a listener binds: the connections the peer just closed may wait out TIME_WAIT.
    s.set_reuse_address(true).ok()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    s.bind(&addr.into()).ok()?;
    Some(s)
}

/// An HTTPS peer on 127.0.0.1 that can go down (closing every connection) and come back
/// on the same port.
pub struct RemotePeer {
    pub port: u16,
    /// While the peer is down: its port, bound and not listening, so that no other
    /// test's socket takes it meanwhile (a connection to it is refused, as to a port no
    /// one holds). Released only when the peer starts again.
    reserved: Option<socket2::Socket>,
    state: Arc<PeerState>,
    tls: Arc<rustls::ServerConfig>,
    running: Option<(watch::Sender<bool>, JoinSet<()>)>,
}

impl RemotePeer {
    /// A peer that is down: its port is reserved (bound, not listening).
    pub async fn down(pki: &Pki) -> RemotePeer {
        RemotePeer::down_with(pki, false).await
    }

    /// Like [`RemotePeer::down`]; with `mtls`, clients must present a certificate from
    /// the test CA.
    pub async fn down_with(pki: &Pki, mtls: bool) -> RemotePeer {
        let reserved = reserve(0).expect("a port for the peer");
        let port = (reserved.local_addr().ok())
            .and_then(|a| a.as_socket())
            .expect("the reserved port")
            .port();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if mtls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).expect("ca");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let tls = builder
            .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .expect("server cert");
        let (count, _) = watch::channel(0);
        RemotePeer {
            port,
            reserved: Some(reserved),
            state: Arc::new(PeerState {
                received: Mutex::new(Vec::new()),
                count,
                answer: Mutex::new(Answer::SealedOk),
                refuse: Mutex::new(Vec::new()),
            }),
            tls: Arc::new(tls),
            running: None,
        }
    }

    pub async fn up(pki: &Pki) -> RemotePeer {
        let mut p = RemotePeer::down(pki).await;
        p.start().await;
        p
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/api", self.port)
    }

    pub fn set_answer(&self, a: Answer) {
        *self.state.answer.lock().unwrap() = a;
    }

    pub fn refuse_ticket(&self, ticket: &str) {
        self.state.refuse.lock().unwrap().push(ticket.to_string());
    }

    pub fn accept_all(&self) {
        self.state.refuse.lock().unwrap().clear();
    }

    /// Starts serving on its port.
    pub async fn start(&mut self) {
        self.reserved = None;
        let listener = {
            let deadline = Instant::now() + PATIENCE;
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("peer rebind: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("peer cannot bind its port again: {e}"),
                }
            }
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let state = self.state.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        tasks.spawn(accept(listener, acceptor, state, stop_rx));
        self.running = Some((stop_tx, tasks));
    }

    /// Stops serving and closes every open connection.
    pub async fn stop(&mut self) {
        if let Some((stop, mut tasks)) = self.running.take() {
            let _ = stop.send(true);
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        self.reserved = reserve(self.port);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until the peer has opened at least `n` requests.
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        let ok = tokio::time::timeout(PATIENCE, rx.wait_for(|c| *c >= n)).await;
        assert!(
            ok.is_ok(),
            "peer received {} requests, expected {n}",
            self.received().len()
        );
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<PeerState>,
    stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(serve(&state, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

async fn serve(state: &PeerState, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let plain = match open(ct.as_deref(), &body) {
        Ok(p) => p,
        Err(e) => {
            return json(401, format!(r#"{{"statusCode":401,"message":"{e}"}}"#));
        }
    };
    let answer = state.answer.lock().unwrap().clone();
    if let Answer::Slow(d) = &answer {
        tokio::time::sleep(*d).await;
    }
    let v: serde_json::Value = serde_json::from_slice(&plain).unwrap_or_default();
    if state.refuse.lock().unwrap().contains(&key_of(&v)) {
        return json(400, r#"{"statusCode":400,"message":"refused"}"#.into());
    }
    if let Answer::Status(s) = answer {
        return json(s, format!(r#"{{"statusCode":{s}}}"#));
    }
    // Recorded only when accepted: what the portal really took in.
    {
        let mut r = state.received.lock().unwrap();
        r.push(Received {
            path,
            headers,
            plain: plain.clone(),
            at: Instant::now(),
        });
        state.count.send_replace(r.len());
    }
    let reply = format!(
        r#"{{"appNo":{},"responseStatus":"Success","statusCode":200}}"#,
        serde_json::Value::from(v["appNo"].as_str().unwrap_or("-"))
    );
    let sealed = seal(reply.as_bytes());
    let mut r = Response::new(Full::new(Bytes::from(sealed.body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(sealed.content_type),
    );
    r
}

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

// ---------------------------------------------------------------------------------------
// The sidecar, as a real process.

/// A free loopback port below the kernel's ephemeral range, for an address a config must
/// name before the sidecar binds it. A port taken by `bind(0)` and released goes back to
/// that range, where any test's next connection or listener may be handed it before the
/// sidecar binds it (seen once: the sidecar could not start). Below the range only an
/// explicit bind takes a port, and each call here tries a different one.
fn quiet_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let floor = 10_000.min(low.saturating_sub(1_000));
    let span = low - floor;
    // Test binaries run one after another; their processes start at different places.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(floor + start.wrapping_add(n) % span).expect("port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// The sidecar's config for these tests: an egress listener with one route per delivery
/// mode, a public listener answering API-7 from the journal, admin on an ephemeral port.
pub fn config(peer_url: &str, ca: &Path, state: &Path) -> String {
    // A fixed admin port (the CLI finds a running sidecar there): a free one, released.
    let admin = SocketAddr::from(([127, 0, 0, 1], quiet_port()));
    format!(
        r#"
admin: {{ listen: "{admin}", token: "{ADMIN_TOKEN}", metrics: open }}
state: {{ dir: "{state}" }}
limits:
  per_ip_rate: {{ per_second: 1000, burst: 1000 }}
  upstream_connect_timeout: 1s
peers:
  bsk:
    agid: BSK
    passcode: "{PASSCODE}"
    jwt: {{ secret: "{JWT_SECRET}", require_exp: true, leeway: 5s, sign_exp: 5m }}
    url: {peer_url}
    tls: {{ ca: "{ca}" }}
listeners:
  - name: egress
    listen: 127.0.0.1:0
    routes:
      - path: /push/queued
        to: bsk
        remote: /push
        envelope: [token, jwt]
        delivery: queued
        retry: {{ initial: 50ms, max: 250ms }}
        upstream_timeout: 2s
      - path: /push/fallback
        to: bsk
        remote: /push
        envelope: [token, jwt]
        delivery: fallback
        retry: {{ initial: 50ms, max: 250ms }}
        upstream_timeout: 2s
      - path: /push/short
        to: bsk
        remote: /push
        envelope: [token, jwt]
        delivery: queued
        max_age: 300ms
        retry: {{ initial: 50ms, max: 250ms }}
      - path: /api6
        to: bsk
        remote: /auth
        envelope: [token, jwt]
        reply: open
        upstream_timeout: 700ms
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/missed
        from: bsk
        envelope: [token, jwt]
        ip_check: false
        serve: journal
        response: {{ mode: seal }}
"#,
        state = state.display(),
        ca = ca.display(),
    )
}

pub struct Sidecar {
    child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Starts `bsk-sidecar run` and waits for its listeners' addresses in its log.
    pub fn start(config: &Path) -> Sidecar {
        Sidecar::start_with_env(config, &[])
    }

    /// [`Sidecar::start`] with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &Path)]) -> Sidecar {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bsk-sidecar"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bsk-sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut addrs = HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + PATIENCE;
        while addrs.len() < 2 || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "sidecar did not report its listeners:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let addr = v["addr"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            match (v["message"].as_str(), addr) {
                (Some("listening"), Some(a)) => {
                    if let Some(n) = v["listener"].as_str() {
                        addrs.insert(n.to_string(), a);
                    }
                }
                (Some("admin listening"), Some(a)) => admin = Some(a),
                _ => {}
            }
        }
        Sidecar {
            child,
            addrs,
            admin: admin.unwrap_or_else(|| unreachable!()),
            log,
        }
    }

    pub fn egress(&self) -> SocketAddr {
        self.addrs["egress"]
    }

    pub fn public(&self) -> SocketAddr {
        self.addrs["public"]
    }

    /// SIGKILL: no drain, no flush, nothing the process could do about it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bsk-sidecar ARGS`; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bsk-sidecar"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run bsk-sidecar");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// Clients.

/// One HTTP/1.1 request on a fresh connection; returns status, content type and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ct, body)
}

/// One request to the admin listener with extra `headers` (`Host` is the listener's
/// address unless given); returns status, headers and body.
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let stream = TcpStream::connect(admin).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header(header::HOST, admin.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

/// The application's push: plain JSON to an egress route.
pub async fn push(sc: &Sidecar, route: &str, json: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = request(
        sc.egress(),
        "POST",
        route,
        "application/json",
        json.as_bytes().to_vec(),
    )
    .await;
    let v = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "non-JSON answer {status}: {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, v)
}

/// An API-2 record; `n` makes the ticket unique, `date` is `YYYYMMDD`.
pub fn api2(n: u32, date: &str, status: u8) -> String {
    format!(
        r#"{{"userid":9054233544,"ticketNo":{date}1507{n:02}{:03},"serviceCode":"AMD/003","appNo":"A-{n}","appSubTime":{date}152025,"deptPayRefNo":"2342","transNo":"T{n}","bankRefNo":"B{n}","paidAmt":200.00,"message":"Draft Submitted","applicationStatus":{status},"statusCode":200,"citizenname":"Anupam Ghosh","citizenmobile":"9963258963"}}"#,
        n % 1000
    )
}

/// The outbox as the admin listener lists it.
pub async fn outbox(sc: &Sidecar) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, body) =
        admin_request(sc.admin, "GET", "/outbox", &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("outbox JSON")
}

/// Waits until the outbox holds nothing queued.
pub async fn wait_outbox_empty(sc: &Sidecar) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = outbox(sc).await;
        if v["queued"].as_array().is_some_and(|a| a.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "outbox never emptied: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What identifies a push: `ticketNo/applicationStatus` (a draft and the final
/// submission of one ticket are two pushes).
pub fn key_of(v: &serde_json::Value) -> String {
    format!("{}/{}", v["ticketNo"], v["applicationStatus"])
}

/// [`key_of`] each received push, in arrival order.
pub fn tickets(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| key_of(&serde_json::from_slice(&r.plain).unwrap_or_default()))
        .collect()
}

/// Like [`push`], but a connection that breaks (the sidecar was killed) is `None`.
pub async fn try_push(
    addr: SocketAddr,
    route: &str,
    json: &str,
) -> Option<(u16, serde_json::Value)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(route)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .ok()?;
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&body).ok()?))
}
