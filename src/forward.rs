//! The client to the legacy application: pooled HTTP/1.1 keep-alive connections, one
//! pool per upstream address, connect and response deadlines.
//!
//! Deliberately lean: a request takes an idle connection from a short-held lock (or
//! dials a new one), and its own task drives that connection while it sends and reads
//! the answer, then puts the connection back. No task per connection or per request, no
//! hand-off between threads.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::HeaderValue;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never
/// carried from one hop to the next, in either direction. The one list: routes may not
/// ask to forward them (config) and the application's answer loses them (pipeline).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` (lower case, as `http::HeaderName` holds it) is in [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Why forwarding failed (`crate::error` maps it to the answer the client gets).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: String },
    #[error("upstream did not answer before the deadline")]
    Timeout,
    #[error("upstream answer larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("upstream connection failed: {0}")]
    Http(#[from] hyper::Error),
}

/// A plain-HTTP upstream on loopback or the local network.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub authority: Authority,
    pub path_and_query: PathAndQuery,
    /// The `Host` header the application receives: the authority, made once.
    pub host: HeaderValue,
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "scheme `{other}` not supported for upstreams; use http://"
                ))
            }
            None => return Err("missing scheme; write http://host:port/path".into()),
        }
        let authority = uri.authority().cloned().ok_or("missing host")?;
        let path_and_query = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("`{authority}` is not a Host header value"))?;
        Ok(Upstream {
            authority,
            path_and_query,
            host,
        })
    }

    /// `host:port` to connect to (port 80 when none is written).
    pub fn connect_addr(&self) -> String {
        let host = self.authority.host();
        let port = self.authority.port_u16().unwrap_or(80);
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

/// Idle keep-alive connections to one destination, shared with the egress client.
pub(crate) struct IdlePool {
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
}

impl IdlePool {
    pub(crate) fn new(max_idle: usize) -> Self {
        IdlePool {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn take(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: SendRequest<Full<Bytes>>) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(s);
        }
    }
}

/// Why a pooled exchange failed; `Dial` carries the dialer's own error.
pub(crate) enum ExchangeFailure<E> {
    Dial(E),
    Timeout,
    TooLarge,
    Http(hyper::Error),
}

/// Sends `req` on an idle connection from `pool` (or one `dial` makes) and reads the whole
/// answer, at most `max_response` bytes, before `deadline`. A request that was never
/// written to a pooled connection that had just closed is retried on another.
pub(crate) async fn exchange<E, F, Fut>(
    pool: &IdlePool,
    dial: F,
    mut req: Request<Full<Bytes>>,
    deadline: Instant,
    max_response: usize,
) -> Result<Response<Bytes>, ExchangeFailure<E>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<SendRequest<Full<Bytes>>, E>>,
{
    use ExchangeFailure::*;
    loop {
        let (mut sender, reused) = match pool.take() {
            Some(s) => (s, true),
            None => {
                let s = timeout_at(deadline, dial())
                    .await
                    .map_err(|_| Timeout)?
                    .map_err(Dial)?;
                (s, false)
            }
        };
        if reused
            && timeout_at(deadline, sender.ready())
                .await
                .map_err(|_| Timeout)?
                .is_err()
        {
            continue;
        }
        let sent = timeout_at(deadline, sender.try_send_request(req))
            .await
            .map_err(|_| Timeout)?;
        let resp = match sent {
            Ok(resp) => resp,
            Err(mut e) => match e.take_message() {
                Some(back) if reused => {
                    req = back;
                    continue;
                }
                _ => return Err(Http(e.into_error())),
            },
        };
        let (parts, body) = resp.into_parts();
        let collected = timeout_at(deadline, Limited::new(body, max_response).collect())
            .await
            .map_err(|_| Timeout)?;
        let body = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return Err(match e.downcast::<hyper::Error>() {
                    Ok(h) => Http(*h),
                    Err(_) => TooLarge,
                })
            }
        };
        pool.put(sender);
        return Ok(Response::from_parts(parts, body));
    }
}

/// One keep-alive connection to an upstream: the request handle and the connection state
/// machine itself, which the request's own task drives while it uses the connection (no
/// task per connection, no hand-off between tasks or threads per request). `conn` is
/// `None` once the connection has ended.
struct UpConn {
    sender: SendRequest<Full<Bytes>>,
    conn: Option<Pin<Box<UpConnection>>>,
}

type UpConnection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Runs `fut` to completion, polling the connection alongside it so the request is written
/// and the answer read. When the connection ends first it is dropped, which fails whatever
/// `fut` still waits for, and `fut` resolves with that.
async fn drive<F: Future>(conn: &mut Option<Pin<Box<UpConnection>>>, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(c) = conn.as_mut() {
            if let Poll::Ready(r) = c.as_mut().poll(cx) {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection closed with error");
                }
                *conn = None;
            }
            return fut.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
}

impl UpConn {
    fn is_open(&self) -> bool {
        self.conn.is_some() && !self.sender.is_closed()
    }
}

/// One upstream address and its idle connections, most recently used first out, kept per
/// connection worker: a connection is registered with the reactor of the worker that
/// opened it, so only that worker uses it again (slot 0 serves any other thread).
struct Pool {
    authority: Authority,
    addr: String,
    idle: Box<[Mutex<Vec<UpConn>>]>,
    max_idle: usize,
}

impl Pool {
    fn new(authority: Authority, addr: String, max_idle: usize, workers: usize) -> Self {
        Pool {
            authority,
            addr,
            idle: (0..=workers).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle,
        }
    }

    /// The calling worker's idle connections (`new` makes slot 0 and one per worker).
    fn slot(&self) -> Option<std::sync::MutexGuard<'_, Vec<UpConn>>> {
        let slot = (self.idle.get(crate::workers::current())).or_else(|| self.idle.first());
        slot.map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take(&self) -> Option<UpConn> {
        let mut idle = self.slot()?;
        while let Some(c) = idle.pop() {
            if c.is_open() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: UpConn) {
        if !c.is_open() {
            return;
        }
        let Some(mut idle) = self.slot() else {
            return;
        };
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<UpConn, ForwardError> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| ForwardError::ConnectTimeout {
                addr: self.addr.clone(),
            })?
            .map_err(|source| ForwardError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(UpConn {
            sender,
            conn: Some(Box::pin(conn)),
        })
    }

    /// Sends `req` on an idle connection (or a new one) and reads the whole answer, at most
    /// `max_response` bytes, before `deadline`. A request that was never written to a
    /// pooled connection that had just closed is retried on another.
    async fn exchange(
        &self,
        mut req: Request<Full<Bytes>>,
        deadline: Instant,
        connect_timeout: Duration,
        max_response: usize,
    ) -> Result<Response<Bytes>, ForwardError> {
        loop {
            let (mut up, reused) = match self.take() {
                Some(c) => (c, true),
                None => {
                    let c = timeout_at(deadline, self.connect(connect_timeout))
                        .await
                        .map_err(|_| ForwardError::Timeout)??;
                    (c, false)
                }
            };
            let ready = timeout_at(deadline, drive(&mut up.conn, up.sender.ready()))
                .await
                .map_err(|_| ForwardError::Timeout)?;
            if let Err(e) = ready {
                if reused {
                    continue;
                }
                return Err(ForwardError::Http(e));
            }
            let send = up.sender.try_send_request(req);
            let sent = timeout_at(deadline, drive(&mut up.conn, send))
                .await
                .map_err(|_| ForwardError::Timeout)?;
            let resp = match sent {
                Ok(resp) => resp,
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        req = back;
                        continue;
                    }
                    _ => return Err(ForwardError::Http(e.into_error())),
                },
            };
            let (parts, body) = resp.into_parts();
            let collected = timeout_at(
                deadline,
                drive(&mut up.conn, Limited::new(body, max_response).collect()),
            )
            .await
            .map_err(|_| ForwardError::Timeout)?;
            let body = match collected {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    return Err(match e.downcast::<hyper::Error>() {
                        Ok(h) => ForwardError::Http(*h),
                        Err(_) => ForwardError::TooLarge {
                            limit: max_response,
                        },
                    })
                }
            };
            self.put(up);
            return Ok(Response::from_parts(parts, body));
        }
    }
}

/// Pooled client for every upstream the config names: one pool per address, found by
/// comparing the route's authority (no per-request allocation), each keeping up to
/// `max_idle` connections so a pool sized to the concurrency does not churn.
pub struct Forwarder {
    pools: Vec<Arc<Pool>>,
    connect_timeout: Duration,
    max_response: usize,
    max_idle: usize,
    workers: usize,
}

impl Forwarder {
    /// `max_idle`: idle connections kept per upstream and worker (the sidecar uses its
    /// in-flight cap, the most it can have busy at once); `workers`: how many connection
    /// workers will send through it (each keeps its own idle connections).
    pub fn new<'a>(
        upstreams: impl IntoIterator<Item = &'a Upstream>,
        connect_timeout: Duration,
        max_response: usize,
        max_idle: usize,
        workers: usize,
    ) -> Self {
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        for u in upstreams {
            if !pools.iter().any(|p| p.authority == u.authority) {
                pools.push(Arc::new(Pool::new(
                    u.authority.clone(),
                    u.connect_addr(),
                    max_idle,
                    workers,
                )));
            }
        }
        Forwarder {
            pools,
            connect_timeout,
            max_response,
            max_idle,
            workers,
        }
    }

    /// Sends `req` to `upstream` and reads the whole answer before `timeout` elapses.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, ForwardError> {
        let pool = match self
            .pools
            .iter()
            .find(|p| p.authority == upstream.authority)
        {
            Some(p) => p.clone(),
            None => Arc::new(Pool::new(
                upstream.authority.clone(),
                upstream.connect_addr(),
                self.max_idle,
                self.workers,
            )),
        };
        let deadline = Instant::now() + timeout;
        pool.exchange(req, deadline, self.connect_timeout, self.max_response)
            .await
    }
}
