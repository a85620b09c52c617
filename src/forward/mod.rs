//! The client to the legacy application: pooled HTTP/1.1 keep-alive connections, one
//! pool per upstream address, connect and response deadlines.
//!
//! Deliberately lean: a request takes an idle connection from a short-held lock (or
//! dials a new one), and its own task writes the request and reads the answer on it
//! ([`h1`]), then puts the connection back. No task per connection or per request, no
//! hand-off between threads. (The egress client's hyper connections share
//! [`IdlePool`] and [`exchange`].)

mod answer;
mod h1;

pub use answer::Answer;
use h1::Conn;
pub(crate) use h1::{decimal, last_coding_is_chunked, lists_token, write_parts};
pub use h1::{Fault, FixedFields, RequestHead};

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::words::same_name;

/// The header every answer and every forwarded request carries the request id in (named
/// once: a name made from a `&str` is copied each time).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never
/// carried from one hop to the next, in either direction. The one list: routes may not
/// ask to forward them (config) and the application's answer loses them (pipeline).
pub const HOP_BY_HOP: &[&str] = &[
    CONNECTION_NAME,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING_NAME,
    UPGRADE,
];

// The list's names, each written once, for the list and for `is_hop_by_hop`.
const CONNECTION_NAME: &str = "connection";
const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";
const TE: &str = "te";
const TRAILER: &str = "trailer";
const TRANSFER_ENCODING_NAME: &str = "transfer-encoding";
const UPGRADE: &str = "upgrade";

/// Whether `name`, in any case (as a peer sent it, or lower case as `http::HeaderName`
/// holds it), is in [`HOP_BY_HOP`].
///
/// Every answer's fields are asked this, so the one name of the list a name could be is
/// picked by its length (and first letter) and compared once, not the seven in turn.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let first = name.first().map(u8::to_ascii_lowercase);
    let is = |candidate: &str| same_name(name, candidate.as_bytes());
    match (name.len(), first) {
        (2, _) => is(TE),
        (7, Some(b't')) => is(TRAILER),
        (7, _) => is(UPGRADE),
        (10, Some(b'c')) => is(CONNECTION_NAME),
        (10, _) => is(KEEP_ALIVE),
        (16, _) => is(PROXY_CONNECTION),
        (17, _) => is(TRANSFER_ENCODING_NAME),
        _ => false,
    }
}

/// The field names that `Connection` field values list: those fields describe this hop
/// only (RFC 9110 §7.6.1), in a request as in an answer. `close` and the hop-by-hop names,
/// dropped in any case, are left out, so the usual `keep-alive` lists nothing and
/// allocates nothing. Names as sent; compare them ignoring case.
pub fn connection_listed<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    let mut listed = Vec::new();
    for value in values {
        // The usual value names one option and no field: nothing to split.
        let whole = value.trim_ascii();
        if same_name(whole, KEEP_ALIVE.as_bytes()) || same_name(whole, b"close") {
            continue;
        }
        listed.extend(
            value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty() && !same_name(t, b"close") && !is_hop_by_hop(t)),
        );
    }
    listed
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
    Upstream(Fault),
}

impl ForwardError {
    fn from_fault(fault: Fault, limit: usize) -> ForwardError {
        match fault {
            Fault::TooLarge => ForwardError::TooLarge { limit },
            other => ForwardError::Upstream(other),
        }
    }

    /// Whether the request may have reached the application: anything but a connection
    /// that never opened or never took a byte of it.
    pub fn maybe_delivered(&self) -> bool {
        !matches!(
            self,
            ForwardError::Connect { .. }
                | ForwardError::ConnectTimeout { .. }
                | ForwardError::Upstream(Fault::Unsent(_))
        )
    }
}

/// Names the peer a request came from, to the application.
const X_BSK_PEER: HeaderName = HeaderName::from_static("x-bsk-peer");

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

    /// The fields every request a route sends this application carries with the same
    /// values: `Host`, `Content-Type` (the body is the opened JSON) and `X-BSK-Peer`, the
    /// sending peer's name (`peer`). Encoded once, when the route is built.
    pub fn fixed_fields(&self, peer: &HeaderValue) -> FixedFields {
        const JSON: HeaderValue = HeaderValue::from_static("application/json");
        FixedFields::new([
            (&http::header::HOST, &self.host),
            (&http::header::CONTENT_TYPE, &JSON),
            (&X_BSK_PEER, peer),
        ])
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

/// One upstream address and its idle connections, most recently used first out, kept per
/// connection worker: a connection is registered with the reactor of the worker that
/// opened it, so only that worker uses it again (slot 0 serves any other thread). Each
/// slot is on a cache line of its own: every request locks its worker's slot twice, and
/// two slots sharing a line would pass it between the cores at each lock.
struct Pool {
    authority: Authority,
    addr: String,
    idle: Box<[CachePadded<Mutex<Vec<Conn>>>]>,
    max_idle: usize,
}

impl Pool {
    fn new(authority: Authority, addr: String, max_idle: usize, workers: usize) -> Self {
        Pool {
            authority,
            addr,
            idle: (0..=workers).map(|_| CachePadded::default()).collect(),
            max_idle,
        }
    }

    /// The calling worker's idle connections (`new` makes slot 0 and one per worker).
    fn slot(&self) -> Option<std::sync::MutexGuard<'_, Vec<Conn>>> {
        let slot = (self.idle.get(crate::workers::current())).or_else(|| self.idle.first());
        slot.map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take(&self) -> Option<Conn> {
        let mut idle = self.slot()?;
        while let Some(c) = idle.pop() {
            if c.is_idle_open() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: Conn) {
        let Some(mut idle) = self.slot() else {
            return;
        };
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<Conn, ForwardError> {
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
        Ok(Conn::new(stream))
    }

    /// Sends `req` on an idle connection (or a new one) and reads the whole answer, at most
    /// `max_response` bytes. A request that a pooled connection failed to take (not one
    /// byte written: the application had closed it) goes on another.
    async fn exchange(
        &self,
        head: &RequestHead,
        body: &[u8],
        connect_timeout: Duration,
        max_response: usize,
        deadline: Instant,
    ) -> Result<Answer, ForwardError> {
        let fault = |e| ForwardError::from_fault(e, max_response);
        loop {
            let (mut conn, reused) = match self.take() {
                Some(c) => (c, true),
                None => {
                    let dialed = timeout_at(deadline, self.connect(connect_timeout)).await;
                    (dialed.map_err(|_| ForwardError::Timeout)??, false)
                }
            };
            match conn.exchange(head, body, max_response, deadline).await {
                None => return Err(ForwardError::Timeout),
                Some(Err(Fault::Unsent(_))) if reused => continue,
                Some(Err(e)) => return Err(fault(e)),
                Some(Ok((resp, reusable))) => {
                    if reusable {
                        self.put(conn);
                    }
                    return Ok(resp);
                }
            }
        }
    }
}

/// Pooled client for every upstream the config names: one pool per address, found by
/// comparing the route's authority (no per-request allocation), each keeping up to
/// `max_idle` connections so a pool sized to the concurrency does not churn.
pub struct Forwarder {
    pools: Vec<Pool>,
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
        let mut pools: Vec<Pool> = Vec::new();
        for u in upstreams {
            if !pools.iter().any(|p| p.authority == u.authority) {
                pools.push(Pool::new(
                    u.authority.clone(),
                    u.connect_addr(),
                    max_idle,
                    workers,
                ));
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

    /// Sends the request (`head`, then `body`) to `upstream` and reads the whole answer
    /// before `deadline` (see [`deadline_after`]).
    pub async fn send(
        &self,
        upstream: &Upstream,
        head: &RequestHead,
        body: &[u8],
        deadline: std::time::Instant,
    ) -> Result<Answer, ForwardError> {
        // The route's authority as written (the config's own text, so nearly always the
        // same bytes as its pool's), else as `http` compares them, ignoring case. The pool
        // is borrowed, not counted: both workers taking a reference to it per request
        // would pass its counter's cache line between the cores.
        let written = upstream.authority.as_str();
        let found = (self.pools.iter())
            .find(|p| p.authority.as_str() == written)
            .or_else(|| {
                self.pools
                    .iter()
                    .find(|p| p.authority == upstream.authority)
            });
        let unlisted;
        let pool: &Pool = match found {
            Some(p) => p,
            None => {
                unlisted = Pool::new(
                    upstream.authority.clone(),
                    upstream.connect_addr(),
                    self.max_idle,
                    self.workers,
                );
                &unlisted
            }
        };
        let deadline = Instant::from_std(deadline);
        pool.exchange(
            head,
            body,
            self.connect_timeout,
            self.max_response,
            deadline,
        )
        .await
    }
}

/// `timeout` after `start`: the deadline [`Forwarder::send`] takes. A timeout too long to
/// add is about thirty years.
pub fn deadline_after(start: std::time::Instant, timeout: Duration) -> std::time::Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    (start.checked_add(timeout))
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn hop_by_hop_names_are_the_list_in_any_case_and_nothing_else() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
            // One letter off, at each end: the same length, not the name.
            let mut wrong = name.as_bytes().to_vec();
            for at in [0, wrong.len() - 1] {
                let kept = wrong[at];
                wrong[at] = b'x';
                assert!(
                    !is_hop_by_hop(&wrong),
                    "{}",
                    String::from_utf8_lossy(&wrong)
                );
                wrong[at] = kept;
            }
            assert!(!is_hop_by_hop(format!("{name}s").as_bytes()), "{name}s");
        }
        for other in [
            "",
            "t",
            "content-length",
            "x-request-id",
            "Tranfer-Encoding",
            "keepalive",
        ] {
            assert!(!is_hop_by_hop(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn connection_lists_the_fields_it_names_and_not_its_options() {
        let listed = |values: &[&'static str]| -> Vec<String> {
            connection_listed(values.iter().map(|v| v.as_bytes()))
                .into_iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect()
        };
        assert!(listed(&["keep-alive"]).is_empty());
        assert!(listed(&[" Keep-Alive ", "CLOSE"]).is_empty());
        assert_eq!(listed(&["keep-alive, X-Secret"]), ["X-Secret"]);
        assert_eq!(
            listed(&["close", " foo ,, Upgrade,te, bar"]),
            ["foo", "bar"]
        );
        assert_eq!(listed(&["X-A", "keep-alive", "x-b,close"]), ["X-A", "x-b"]);
    }

    /// A stand-in application on loopback that answers every request `{"n":<count>}`;
    /// with `one_each` it closes each connection after its first answer (without saying
    /// so). Counts connections and requests.
    async fn stand_in(one_each: bool) -> (Upstream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        stand_in_answering(one_each, usize::MAX).await
    }

    /// [`stand_in`], answering only the first `answered` requests: it reads the later
    /// ones and never answers them.
    async fn stand_in_answering(
        one_each: bool,
        answered: usize,
    ) -> (Upstream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (conns.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // Each request here is a head and a two-byte body.
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            if seen.len() < end + 6 {
                                break;
                            }
                            seen.drain(..end + 6);
                            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                            if n > answered {
                                continue;
                            }
                            let body = format!("{{\"n\":{n}}}");
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            s.write_all(answer.as_bytes()).await.unwrap();
                            if one_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let up = Upstream::parse(&format!("http://{addr}/api")).unwrap();
        (up, conns, requests)
    }

    fn request(up: &Upstream) -> RequestHead {
        let mut head = RequestHead::new(&http::Method::POST, up.path_and_query.path(), None);
        head.field(&http::header::HOST, up.host.as_bytes());
        head.field_number(&http::header::CONTENT_LENGTH, 2);
        head
    }

    /// Sends a request through `fwd` and asserts the stand-in counted it the `n`th.
    async fn assert_answer_n(fwd: &Forwarder, up: &Upstream, n: usize) {
        let resp = fwd
            .send(up, &request(up), b"{}", in_five_seconds())
            .await
            .unwrap();
        assert_eq!(resp.body.as_ref(), format!("{{\"n\":{n}}}").as_bytes());
    }

    fn in_five_seconds() -> std::time::Instant {
        deadline_after(std::time::Instant::now(), Duration::from_secs(5))
    }

    fn forwarder(up: &Upstream) -> Forwarder {
        Forwarder::new([up], Duration::from_secs(5), 1024, 8, 1)
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_requests() {
        let (up, conns, _) = stand_in(false).await;
        let fwd = forwarder(&up);
        for n in 1..=3 {
            assert_answer_n(&fwd, &up, n).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    /// What [`kept_connection_exchanges`] saw: each exchange's body or error, and how
    /// long the last one took; then how many connections the application was given.
    type Exchanges = (Vec<Outcome>, Duration, usize);

    /// An exchange's answer body, or its error as text.
    type Outcome = Result<Bytes, String>;

    /// On a connection worker: exchanges with the given deadlines (ms) on a connection
    /// that stays open, against an application that answers only its first `answered`
    /// requests.
    fn kept_connection_exchanges(answered: usize, deadlines: &'static [u64]) -> Exchanges {
        let workers = crate::workers::Workers::start(1).expect("a worker starts");
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn(move || async move {
            let (up, conns, _) = stand_in_answering(false, answered).await;
            let fwd = forwarder(&up);
            let mut results = Vec::new();
            let mut waited = Duration::ZERO;
            for ms in deadlines {
                let start = std::time::Instant::now();
                let deadline = deadline_after(start, Duration::from_millis(*ms));
                let sent = fwd.send(&up, &request(&up), b"{}", deadline).await;
                waited = start.elapsed();
                results.push(sent.map(|a| a.body).map_err(|e| e.to_string()));
            }
            let report = (results, waited, conns.load(Ordering::SeqCst));
            tx.send(report).expect("the test waits for the report");
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the exchanges ended")
    }

    /// On a connection worker a kept connection keeps its deadline timer, moved to each
    /// exchange's deadline: earlier than the last one, or later. Each exchange still ends
    /// at its own deadline, not before it and not at an older one.
    #[test]
    fn each_exchange_on_a_kept_connection_ends_at_its_own_deadline() {
        let one = Ok(Bytes::from_static(b"{\"n\":1}"));
        let two = Ok(Bytes::from_static(b"{\"n\":2}"));
        let timeout = Err(ForwardError::Timeout.to_string());
        let cases: [(usize, &'static [u64], Vec<Outcome>); 2] = [
            // Answered: a timer at 5 s, then one moved earlier, to 300 ms. Not answered:
            // the timer moved later, to 400 ms.
            (
                2,
                &[5_000, 300, 400],
                vec![one.clone(), two, timeout.clone()],
            ),
            // Answered with a timer at 5 s; not answered, the timer moved earlier, to
            // 300 ms.
            (1, &[5_000, 300], vec![one, timeout]),
        ];
        for (answered, deadlines, expected) in cases {
            let (results, waited, conns) = kept_connection_exchanges(answered, deadlines);
            assert_eq!(results, expected, "deadlines {deadlines:?} ms");
            let last = Duration::from_millis(*deadlines.last().expect("a deadline"));
            assert!(waited >= last, "ended before {last:?}: {waited:?}");
            assert!(
                waited < Duration::from_secs(5),
                "ended at an older deadline: {waited:?}"
            );
            assert_eq!(conns, 1, "every exchange went on the kept connection");
        }
    }

    #[tokio::test]
    async fn a_connection_the_application_closed_while_idle_is_not_used_again() {
        let (up, conns, requests) = stand_in(true).await;
        let fwd = forwarder(&up);
        let pool = fwd.pools.first().unwrap();
        for n in 1..=3 {
            assert_answer_n(&fwd, &up, n).await;
            // The answer said nothing of the close: the connection went back to the pool,
            // until the reactor sees its end.
            tokio::time::timeout(Duration::from_secs(10), async {
                while pool.slot().unwrap().iter().any(|c| c.is_idle_open()) {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the application's close was never seen");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        assert_eq!(requests.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_never_delivered_and_an_oversized_answer_is_refused() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let up = Upstream::parse(&format!("http://{addr}/")).unwrap();
        let err = forwarder(&up)
            .send(&up, &request(&up), b"{}", in_five_seconds())
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Connect { .. }), "{err}");
        assert!(!err.maybe_delivered());

        let (up, _, _) = stand_in(false).await;
        let small = Forwarder::new([&up], Duration::from_secs(5), 4, 8, 1);
        let err = small
            .send(&up, &request(&up), b"{}", in_five_seconds())
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::TooLarge { limit: 4 }), "{err}");
        assert!(err.maybe_delivered());
    }
}
