//! The probe's HTTP(S) client: one request per fresh connection, paced to at most
//! `rate` per second, never more than [`MAX_REQUESTS`] in all; and a look at the TLS
//! handshake (version, chain, days to expiry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The most requests one probe sends.
pub const MAX_REQUESTS: usize = 100;
/// The highest pace a probe runs at, per second.
pub const MAX_RATE: u32 = 10;
/// Answers are read up to this size.
const MAX_ANSWER: usize = 4 << 20;

/// Why the probe could not talk to the target.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    BadUrl(String),
    #[error("the probe's budget of {MAX_REQUESTS} requests is spent")]
    Budget,
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP: {0}")]
    Http(String),
}

/// Where the probe sends.
#[derive(Clone, Debug)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ClientError> {
        let bad = || ClientError::BadUrl(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Target {
            https,
            host,
            port,
            path,
            authority: authority.as_str().to_string(),
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One request to send.
#[derive(Clone)]
pub struct Outgoing {
    pub content_type: String,
    pub authorization: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What came back.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// Lower-case names, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// From the first byte sent to the last byte read.
    pub elapsed: Duration,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the TLS handshake showed.
#[derive(Clone, Debug)]
pub struct TlsFacts {
    pub version: String,
    pub chain_len: usize,
    /// Unix seconds of the leaf's `notAfter`.
    pub not_after: Option<i64>,
}

/// A paced, bounded client for one target.
pub struct Client {
    target: Target,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    interval: Duration,
    next: Option<tokio::time::Instant>,
    sent: usize,
    timeout: Duration,
}

/// The system's trusted roots, or the certificates in `ca` (PEM).
pub fn tls_config(ca: Option<&[CertificateDer<'static>]>) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(certs) => {
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| ClientError::TlsSetup(format!("--ca: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Client {
    /// `rate` is clamped to 1..=[`MAX_RATE`].
    pub fn new(
        target: Target,
        tls: Option<ClientConfig>,
        rate: u32,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let tls = match (target.https, tls) {
            (true, Some(cfg)) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|_| ClientError::BadUrl(target.host.clone()))?;
                Some((TlsConnector::from(Arc::new(cfg)), name))
            }
            (true, None) => return Err(ClientError::TlsSetup("no TLS configuration".into())),
            (false, _) => None,
        };
        let rate = rate.clamp(1, MAX_RATE);
        Ok(Client {
            target,
            tls,
            interval: Duration::from_millis(1000 / u64::from(rate)),
            next: None,
            sent: 0,
            timeout,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Requests sent so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let addr = self.target.addr();
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Plain(stream)),
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(self.timeout, connector.connect(name.clone(), stream))
                        .await
                        .map_err(|_| ClientError::Timeout(self.timeout))?
                        .map_err(|source| ClientError::Tls { addr, source })?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }

    /// The TLS handshake alone (no request; not counted against the budget).
    pub async fn inspect_tls(&self) -> Result<TlsFacts, ClientError> {
        match self.connect().await? {
            Conn::Plain(_) => Err(ClientError::TlsSetup("not an https:// target".into())),
            Conn::Tls(s) => {
                let (_, conn) = s.get_ref();
                let version = conn
                    .protocol_version()
                    .map(|v| format!("{v:?}").replace("TLSv1_", "TLS 1."))
                    .unwrap_or_else(|| "unknown".into());
                let chain = conn.peer_certificates().unwrap_or_default();
                Ok(TlsFacts {
                    version,
                    chain_len: chain.len(),
                    not_after: chain.first().and_then(crate::tls::not_after),
                })
            }
        }
    }

    /// Sends `out` as a POST to the target, after waiting for its slot in the pace.
    pub async fn post(&mut self, out: &Outgoing) -> Result<Answer, ClientError> {
        if self.sent >= MAX_REQUESTS {
            return Err(ClientError::Budget);
        }
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
        }
        self.next = Some(tokio::time::Instant::now() + self.interval);
        self.sent += 1;
        let started = Instant::now();
        let conn = self.connect().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.target.path.as_str())
            .header(header::HOST, self.target.authority.as_str())
            .header(header::USER_AGENT, "bsk-sidecar-probe")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(out.body.clone())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let h = req.headers_mut();
        let value =
            |v: &str| HeaderValue::from_str(v).map_err(|e| ClientError::Http(e.to_string()));
        h.insert(header::CONTENT_TYPE, value(&out.content_type)?);
        if let Some(a) = &out.authorization {
            h.insert(header::AUTHORIZATION, value(a)?);
        }
        for (name, v) in &out.headers {
            h.insert(*name, value(v)?);
        }
        let exchange = async {
            let resp = match conn {
                Conn::Plain(s) => send_on(s, req).await?,
                Conn::Tls(s) => send_on(*s, req).await?,
            };
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?
                .to_bytes();
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            Ok::<_, ClientError>(Answer {
                status: parts.status.as_u16(),
                headers,
                body,
                elapsed: Duration::ZERO,
            })
        };
        let mut answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        answer.elapsed = started.elapsed();
        Ok(answer)
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

async fn send_on<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))
}
