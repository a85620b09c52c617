//! Outbound HTTP(S) to remote peers: rustls (TLS 1.2+, ring), the system's roots or the
//! peer's own CA bundle, an optional client certificate, pooled HTTP/1.1 keep-alive
//! connections per peer, connect and response deadlines.
//!
//! Like [`crate::forward`], one task drives each *connection*; a request takes an idle
//! connection from a short-held lock (or dials one) and puts it back when done.
//!
//! Not `hyper-util`'s pooled client with `hyper-rustls`: this shares the idle pool, the
//! exchange and its failure classification with the forwarder (so "the peer may have
//! received it" means the same on both paths, which the outbox's retry rule relies on),
//! and adds per-peer CA bundles and client certificates in a few lines; the swap would
//! bring in a second pool and connector stack to configure the same way.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::clock::Clock;
use crate::config::Peer;
use crate::forward::{exchange, ExchangeFailure, IdlePool};

/// Idle connections kept per peer.
const MAX_IDLE: usize = 32;

/// Why a request to a peer failed. `Connect`/`Tls`/`Http` mean "unreachable"; `Timeout`
/// means the peer may or may not have received it.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("peer did not answer before the deadline")]
    Timeout,
    #[error("peer answer larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("peer connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(String),
}

/// Why a peer's client could not be built at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("peer `{peer}`: no system CA certificates found; set peers.{peer}.tls.ca")]
    NoRoots { peer: String },
    #[error("peer `{peer}`: {what}: {source}")]
    Tls {
        peer: String,
        what: &'static str,
        source: rustls::Error,
    },
    #[error("peer `{peer}`: url `{url}` has no host")]
    NoHost { peer: String, url: String },
}

/// The system's trusted roots, read once.
pub(crate) fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading a system CA certificate failed");
        }
        found.certs
    })
}

/// How to reach one peer.
struct Endpoint {
    /// `host:port` to dial.
    addr: String,
    authority: Authority,
    /// The peer's base path (without a trailing `/`), prefixed to each route's `remote`.
    base_path: String,
    /// `Some` for `https://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    idle: IdlePool,
}

/// One sealed request for a peer.
pub struct Outgoing<'a> {
    /// Path after the peer's base URL.
    pub remote: &'a str,
    pub content_type: &'a str,
    /// `Bearer <jwt>` for a `bearer` stack.
    pub authorization: Option<&'a str>,
    pub body: Bytes,
}

/// Clients for every peer with a `url`.
pub struct PeerClients {
    peers: HashMap<String, Arc<Endpoint>>,
    connect_timeout: Duration,
    max_response: usize,
    /// Stamps what is sealed for a peer (`iat`, `exp`) and judges its answers.
    pub clock: Clock,
}

impl PeerClients {
    pub fn new<'a>(
        peers: impl IntoIterator<Item = &'a Arc<Peer>>,
        connect_timeout: Duration,
        max_response: usize,
    ) -> Result<PeerClients, ClientError> {
        let mut map = HashMap::new();
        for p in peers {
            let Some(url) = &p.url else { continue };
            map.insert(p.name.clone(), Arc::new(endpoint(p, url)?));
        }
        Ok(PeerClients {
            peers: map,
            connect_timeout,
            max_response,
            clock: Clock::system(),
        })
    }

    /// POSTs `body` to the peer's `url` + `remote` and reads the whole answer before
    /// `timeout` elapses.
    pub async fn post(
        &self,
        peer: &str,
        out: Outgoing<'_>,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Response<Bytes>, SendError> {
        let Outgoing {
            remote,
            content_type,
            authorization,
            body,
        } = out;
        let ep = self
            .peers
            .get(peer)
            .ok_or_else(|| SendError::Request(format!("peer `{peer}` has no url")))?
            .clone();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{remote}", ep.base_path))
            .header(header::HOST, ep.authority.as_str())
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "bsk-sidecar")
            .header(crate::error::X_REQUEST_ID, request_id)
            .body(Full::new(body))
            .map_err(|e| SendError::Request(e.to_string()))?;
        let ct =
            HeaderValue::from_str(content_type).map_err(|e| SendError::Request(e.to_string()))?;
        req.headers_mut().insert(header::CONTENT_TYPE, ct);
        if let Some(a) = authorization {
            let v = HeaderValue::from_str(a).map_err(|e| SendError::Request(e.to_string()))?;
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        let deadline = Instant::now() + timeout;
        let dial = || ep.connect(self.connect_timeout);
        exchange(&ep.idle, dial, req, deadline, self.max_response)
            .await
            .map_err(|f| match f {
                ExchangeFailure::Dial(e) => e,
                ExchangeFailure::Timeout => SendError::Timeout,
                ExchangeFailure::TooLarge => SendError::TooLarge {
                    limit: self.max_response,
                },
                ExchangeFailure::Http(e) => SendError::Http(e),
            })
    }
}

fn endpoint(p: &Peer, url: &Uri) -> Result<Endpoint, ClientError> {
    let no_host = || ClientError::NoHost {
        peer: p.name.clone(),
        url: url.to_string(),
    };
    let authority = url.authority().cloned().ok_or_else(no_host)?;
    let https = url.scheme_str() == Some("https");
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let base_path = url.path().trim_end_matches('/').to_string();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !https && !loopback {
        tracing::warn!(peer = %p.name, %url, "peer url is plain http: what is sent to it is protected only by the envelope layers, not by TLS");
    }
    let tls = if https {
        let server_name = ServerName::try_from(host.to_string()).map_err(|_| no_host())?;
        Some((TlsConnector::from(Arc::new(tls_config(p)?)), server_name))
    } else {
        None
    };
    Ok(Endpoint {
        addr,
        authority,
        base_path,
        tls,
        idle: IdlePool::new(MAX_IDLE),
    })
}

/// TLS 1.3 and 1.2 only, ring's algorithms, the peer's CA (or the system's), ALPN http/1.1.
fn tls_config(p: &Peer) -> Result<ClientConfig, ClientError> {
    let err = |what, source| ClientError::Tls {
        peer: p.name.clone(),
        what,
        source,
    };
    let mut roots = RootCertStore::empty();
    match &p.tls.ca {
        Some(ca) => {
            for c in ca {
                roots
                    .add(c.clone())
                    .map_err(|e| err("a certificate in tls.ca is not a usable CA", e))?;
            }
        }
        None => {
            let (added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
            if added == 0 {
                return Err(ClientError::NoRoots {
                    peer: p.name.clone(),
                });
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| err("TLS versions", e))?
            .with_root_certificates(roots);
    let mut config = match &p.tls.client {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| err("tls.client_cert / tls.client_key", e))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Endpoint {
    async fn connect(
        &self,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let addr = || self.addr.clone();
        let dial = async {
            let stream =
                TcpStream::connect(&self.addr)
                    .await
                    .map_err(|source| SendError::Connect {
                        addr: addr(),
                        source,
                    })?;
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => Ok::<_, SendError>((Some(stream), None)),
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|source| SendError::Tls {
                            addr: addr(),
                            source,
                        })?;
                    Ok((None, Some(tls)))
                }
            }
        };
        // The TLS handshake counts against the connect deadline too.
        let (plain, tls) = tokio::time::timeout(connect_timeout, dial)
            .await
            .map_err(|_| SendError::Connect {
                addr: addr(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })??;
        let sender = match (plain, tls) {
            (Some(s), _) => {
                let (sender, conn) = http1::handshake(TokioIo::new(s)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "peer connection closed with error");
                    }
                });
                sender
            }
            (None, Some(s)) => {
                let (sender, conn) = http1::handshake(TokioIo::new(s)).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "peer connection closed with error");
                    }
                });
                sender
            }
            (None, None) => {
                return Err(SendError::Request("no connection".into()));
            }
        };
        Ok(sender)
    }
}

/// What `check --online` learns from one peer's `url`.
#[derive(Debug)]
pub struct PeerProbe {
    /// `host:port` dialled.
    pub addr: String,
    /// TCP connect plus, for `https://`, the TLS handshake.
    pub connected_in: Duration,
    /// The peer certificate's `notAfter` (unix seconds), for `https://`.
    pub cert_not_after: Option<i64>,
    /// Status of the answer to `HEAD <url>`.
    pub status: u16,
    /// The answer's `Date`, and when it arrived by our clock.
    pub date: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

/// Connects to peer `p`'s `url` the way deliveries do (its CA or the system's, its client
/// certificate) and sends `HEAD <url>`: any answer proves the path works.
pub async fn probe(p: &Peer, timeout: Duration, clock: &Clock) -> Result<PeerProbe, SendError> {
    let url = p
        .url
        .as_ref()
        .ok_or_else(|| SendError::Request(format!("peer `{}` has no url", p.name)))?;
    let ep = endpoint(p, url).map_err(|e| SendError::Request(e.to_string()))?;
    let started = Instant::now();
    let work = async {
        let stream = TcpStream::connect(&ep.addr)
            .await
            .map_err(|source| SendError::Connect {
                addr: ep.addr.clone(),
                source,
            })?;
        let req = Request::builder()
            .method(Method::HEAD)
            .uri(if ep.base_path.is_empty() {
                "/"
            } else {
                ep.base_path.as_str()
            })
            .header(header::HOST, ep.authority.as_str())
            .header(header::USER_AGENT, "bsk-sidecar check --online")
            .body(Full::new(Bytes::new()))
            .map_err(|e| SendError::Request(e.to_string()))?;
        let (connected_in, cert_not_after, answer) = match &ep.tls {
            None => {
                let connected_in = started.elapsed();
                let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                (connected_in, None, sender.send_request(req).await?)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|source| SendError::Tls {
                        addr: ep.addr.clone(),
                        source,
                    })?;
                let connected_in = started.elapsed();
                let not_after = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(crate::tls::not_after);
                let (mut sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                (connected_in, not_after, sender.send_request(req).await?)
            }
        };
        let received = clock.now();
        let date = answer
            .headers()
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .map(|d| (d, received));
        Ok(PeerProbe {
            addr: ep.addr.clone(),
            connected_in,
            cert_not_after,
            status: answer.status().as_u16(),
            date,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SendError::Timeout)?
}
