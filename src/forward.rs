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

struct Pool {
    addr: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Pool {
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
        if idle.len() < MAX_IDLE {
            idle.push(s);
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
            pools.entry(addr.clone()).or_insert_with(|| {
                Arc::new(Pool {
                    addr,
                    idle: Mutex::new(Vec::new()),
                })
            });
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
        mut req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, ForwardError> {
        let addr = upstream.connect_addr();
        let pool = match self.pools.get(&addr) {
            Some(p) => p.clone(),
            None => Arc::new(Pool {
                addr,
                idle: Mutex::new(Vec::new()),
            }),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let (mut sender, reused) = match pool.take() {
                Some(s) => (s, true),
                None => {
                    let s = timeout_at(deadline, pool.connect(self.connect_timeout))
                        .await
                        .map_err(|_| ForwardError::Timeout)??;
                    (s, false)
                }
            };
            if reused
                && timeout_at(deadline, sender.ready())
                    .await
                    .map_err(|_| ForwardError::Timeout)?
                    .is_err()
            {
                continue;
            }
            let sent = timeout_at(deadline, sender.try_send_request(req))
                .await
                .map_err(|_| ForwardError::Timeout)?;
            let resp = match sent {
                Ok(resp) => resp,
                Err(mut e) => match e.take_message() {
                    // Never written to a pooled connection that had just closed: safe to retry.
                    Some(back) if reused => {
                        req = back;
                        continue;
                    }
                    _ => return Err(ForwardError::Http(e.into_error())),
                },
            };
            let (parts, body) = resp.into_parts();
            let collected = timeout_at(deadline, Limited::new(body, self.max_response).collect())
                .await
                .map_err(|_| ForwardError::Timeout)?;
            let body = match collected {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    return Err(match e.downcast::<hyper::Error>() {
                        Ok(h) => ForwardError::Http(*h),
                        Err(_) => ForwardError::TooLarge {
                            limit: self.max_response,
                        },
                    })
                }
            };
            pool.put(sender);
            return Ok(Response::from_parts(parts, body));
        }
    }
}
