//! The client to the legacy application: pooled HTTP/1.1 keep-alive connections, one
//! small pool per upstream address, connect and response deadlines.
//!
//! Deliberately lean: a request takes an idle connection from a short-held lock (or
//! dials a new one), sends, reads the answer, and puts the connection back. One task
//! per *connection* drives it; no task per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::config::Upstream;
use crate::error::Reject;

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 128;

/// Why forwarding failed, before it becomes a [`Reject`].
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

impl From<ForwardError> for Reject {
    fn from(e: ForwardError) -> Reject {
        match e {
            ForwardError::Timeout => Reject::UpstreamTimeout,
            ForwardError::TooLarge { .. } => Reject::UpstreamBadResponse,
            _ => Reject::UpstreamUnavailable,
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

/// One upstream address and its idle connections.
struct Pool {
    addr: String,
    idle: IdlePool,
}

impl Pool {
    fn new(addr: String) -> Self {
        Pool {
            addr,
            idle: IdlePool::new(MAX_IDLE),
        }
    }

    async fn connect(
        &self,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Full<Bytes>>, ForwardError> {
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
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }
}

/// Pooled client for every upstream the config names.
pub struct Forwarder {
    pools: HashMap<String, Arc<Pool>>,
    connect_timeout: Duration,
    max_response: usize,
}

impl Forwarder {
    pub fn new<'a>(
        upstreams: impl IntoIterator<Item = &'a Upstream>,
        connect_timeout: Duration,
        max_response: usize,
    ) -> Self {
        let mut pools = HashMap::new();
        for u in upstreams {
            let addr = u.connect_addr();
            pools
                .entry(addr.clone())
                .or_insert_with(|| Arc::new(Pool::new(addr)));
        }
        Forwarder {
            pools,
            connect_timeout,
            max_response,
        }
    }

    /// Sends `req` to `upstream` and reads the whole answer before `timeout` elapses.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, ForwardError> {
        let addr = upstream.connect_addr();
        let pool = match self.pools.get(&addr) {
            Some(p) => p.clone(),
            None => Arc::new(Pool::new(addr)),
        };
        let deadline = Instant::now() + timeout;
        let dial = || pool.connect(self.connect_timeout);
        exchange(&pool.idle, dial, req, deadline, self.max_response)
            .await
            .map_err(|f| match f {
                ExchangeFailure::Dial(e) => e,
                ExchangeFailure::Timeout => ForwardError::Timeout,
                ExchangeFailure::TooLarge => ForwardError::TooLarge {
                    limit: self.max_response,
                },
                ExchangeFailure::Http(e) => ForwardError::Http(e),
            })
    }
}
