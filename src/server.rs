//! Listeners: accept loop, connection caps, accept-time allowlist, PROXY protocol and
//! TLS handshake, HTTP/1.1 timeouts, and graceful drain on shutdown.
//!
//! The runtime in force is read from [`Live`] for each connection (caps, allowlist,
//! certificate) and each request, so a reload applies to the next request without
//! dropping a connection.
//!
//! Per connection, a small watchdog enforces what hyper leaves to us: a request head
//! must arrive within `header_read_timeout` once it has started (or once the connection
//! opened), and an idle keep-alive connection is closed after `keepalive_idle`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::guard::client_cert::PresentedCert;
use crate::guard::ip::canonical;
use crate::guard::proxy::{self, ProxyHeader, Rewind};
use crate::pipeline::{self, InFlight};
use crate::reload::Live;
use crate::runtime::Runtime;

/// Listeners bound before serving, so callers (tests, the demo) can learn the ports.
pub struct Bound {
    pub listeners: Vec<(usize, TcpListener)>,
    pub admin: Option<TcpListener>,
}

impl Bound {
    /// The local address of listener `name`.
    pub fn addr_of(&self, rt: &Runtime, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(i, _)| rt.listeners.get(*i).is_some_and(|l| l.name == name))
            .and_then(|(_, l)| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

pub async fn bind(rt: &Runtime) -> io::Result<Bound> {
    let mut listeners = Vec::new();
    for (i, l) in rt.listeners.iter().enumerate() {
        let tcp = TcpListener::bind(l.addr).await.map_err(|e| {
            io::Error::new(e.kind(), format!("listener {} on {}: {e}", l.name, l.addr))
        })?;
        listeners.push((i, tcp));
    }
    let admin = match rt.settings.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("admin listener on {addr}: {e}")))?,
        ),
        None => None,
    };
    Ok(Bound { listeners, admin })
}

/// Counts one open connection in its gauge until dropped — however the connection ends.
struct OpenGauge(prometheus::IntGauge);

impl OpenGauge {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Open connections, in total and per client address.
struct Connections {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

struct ConnSlot {
    conns: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnSlot, &'static str> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err("max_connections");
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err("max_connections_per_ip");
        }
        *n += 1;
        Ok(ConnSlot {
            conns: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.conns.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves every bound listener until `shutdown` resolves, then drains: stops accepting,
/// lets in-flight requests finish (up to `limits.shutdown_grace`) and returns.
pub async fn serve(rt: Arc<Runtime>, bound: Bound, shutdown: impl Future<Output = ()>) {
    serve_live(Live::new(rt), bound, shutdown).await
}

/// [`serve`] on a runtime that [`crate::reload`] may swap while serving. Resolves
/// allowlisted DNS names first, then tells systemd it is ready.
pub async fn serve_live(live: Arc<Live>, bound: Bound, shutdown: impl Future<Output = ()>) {
    let rt = live.load();
    match crate::guard::dns::Resolver::new(&rt.settings.dns) {
        Ok(r) => {
            let dns = &rt.settings.dns;
            crate::guard::dns::refresh(&rt.names, dns.refresh, &r, &rt.metrics, true).await;
        }
        Err(e) => tracing::error!(error = %e, "cannot set up the DNS resolver"),
    }
    let background = [
        tokio::spawn(crate::background::resolve_names(live.clone())),
        tokio::spawn(crate::background::watch_certificates(live.clone())),
    ];
    let watchdog = crate::systemd::spawn_watchdog();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; when all are gone, the drain is complete.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let ready = Arc::new(AtomicBool::new(true));
    let in_flight = Arc::new(InFlight::new());
    let conns = Arc::new(Connections {
        total: AtomicUsize::new(0),
        per_ip: Mutex::new(HashMap::new()),
    });

    let mut accept_tasks = Vec::new();
    for (idx, listener) in bound.listeners {
        accept_tasks.push(tokio::spawn(accept_loop(
            live.clone(),
            idx,
            listener,
            conns.clone(),
            in_flight.clone(),
            stop_rx.clone(),
            done_tx.clone(),
        )));
    }
    if let Some(admin) = bound.admin {
        accept_tasks.push(tokio::spawn(crate::admin::serve(
            rt.clone(),
            admin,
            ready.clone(),
            stop_rx.clone(),
        )));
    }
    let pruner = {
        let live = live.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                if let Some(l) = &live.load().per_ip {
                    l.prune();
                }
            }
        })
    };
    drop(done_tx);
    drop(rt);
    crate::systemd::ready();

    shutdown.await;
    crate::systemd::stopping();
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    pruner.abort();
    for t in background.iter().chain(&watchdog) {
        t.abort();
    }
    let grace = live.load().settings.limits.shutdown_grace;
    match tokio::time::timeout(grace, done_rx.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            grace_secs = grace.as_secs(),
            "drain deadline passed; closing remaining connections"
        ),
    }
}

async fn accept_loop(
    live: Arc<Live>,
    idx: usize,
    listener: TcpListener,
    conns: Arc<Connections>,
    in_flight: Arc<InFlight>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let Some(name) = live.load().listeners.get(idx).map(|l| l.name.clone()) else {
        return;
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = %name, %addr, "listening");
    }
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let rt = live.load();
        let limits = &rt.settings.limits;
        let ip = canonical(peer.ip());
        let refuse = |reason: &str| {
            rt.metrics
                .connections_refused
                .with_label_values(&[&name, reason])
                .inc();
        };
        // A trusted proxy carries many clients: the allowlist applies to the client it
        // names (after the PROXY header, or per request from X-Forwarded-For), and the
        // per-address cap does not apply to the proxy itself.
        let via_proxy = rt
            .settings
            .listeners
            .get(idx)
            .and_then(|l| l.trusted_proxies.as_ref())
            .is_some_and(|t| t.contains_address(ip));
        if !via_proxy {
            if let Some(allow) = rt.listeners.get(idx).and_then(|l| l.accept_allow.as_ref()) {
                if !allow.contains(ip, &rt.names) {
                    refuse("ip_denied");
                    tracing::info!(listener = %name, client = %ip, "connection refused: address not allowed");
                    continue;
                }
            }
        }
        let per_ip_cap = if via_proxy {
            usize::MAX
        } else {
            limits.max_connections_per_ip
        };
        let slot = match conns.admit(ip, limits.max_connections, per_ip_cap) {
            Ok(s) => s,
            Err(reason) => {
                refuse(reason);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(open_connection(
            live.clone(),
            idx,
            stream,
            ip,
            via_proxy,
            slot,
            in_flight.clone(),
            stop.clone(),
            done.clone(),
        ));
    }
}

/// Before HTTP: the PROXY header from a trusted hop (when the listener expects one) and
/// the TLS handshake, each within its deadline.
#[allow(clippy::too_many_arguments)]
async fn open_connection(
    live: Arc<Live>,
    idx: usize,
    mut stream: TcpStream,
    peer: IpAddr,
    via_proxy: bool,
    slot: ConnSlot,
    in_flight: Arc<InFlight>,
    stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let rt = live.load();
    let Some(lst) = rt.listeners.get(idx) else {
        return;
    };
    let proxy_protocol = rt
        .settings
        .listeners
        .get(idx)
        .is_some_and(|l| l.proxy_protocol);
    let refuse = |reason: &str| {
        rt.metrics
            .connections_refused
            .with_label_values(&[&lst.name, reason])
            .inc();
    };
    let mut client = peer;
    let mut prefix = Vec::new();
    if via_proxy && proxy_protocol {
        let deadline = rt.settings.limits.header_read_timeout;
        match tokio::time::timeout(deadline, proxy::read_header(&mut stream)).await {
            Ok(Ok((header, rest))) => {
                if let ProxyHeader::Proxied(src) = header {
                    client = canonical(src.ip());
                }
                prefix = rest;
            }
            Ok(Err(e)) => {
                refuse("proxy_header");
                tracing::info!(listener = %lst.name, proxy = %peer, error = %e, "connection refused: bad PROXY header");
                return;
            }
            Err(_) => {
                refuse("proxy_header");
                return;
            }
        }
        if let Some(allow) = &lst.accept_allow {
            if !allow.contains(client, &rt.names) {
                refuse("ip_denied");
                tracing::info!(listener = %lst.name, client = %client, "connection refused: address not allowed");
                return;
            }
        }
    }
    let stream = Rewind::new(stream, prefix);
    let conn = Conn {
        live: live.clone(),
        idx,
        client,
        xff: via_proxy && !proxy_protocol,
        in_flight,
        stop,
        client_cert: None,
        _slot: slot,
        _done: done,
    };
    match &lst.tls {
        None => serve_http(conn, stream).await,
        Some(tls) => {
            let handshake = tls.acceptor().accept(stream);
            match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
                Ok(Ok(tls_stream)) => {
                    // Read once per connection; the pipeline matches it to a peer's binding.
                    let client_cert = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| PresentedCert::from_der(leaf))
                        .map(Arc::new);
                    serve_http(
                        Conn {
                            client_cert,
                            ..conn
                        },
                        tls_stream,
                    )
                    .await
                }
                Ok(Err(e)) => {
                    refuse("tls_handshake");
                    tracing::info!(listener = %lst.name, client = %client, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    refuse("tls_handshake_timeout");
                    tracing::info!(listener = %lst.name, client = %client, "TLS handshake timed out");
                }
            }
        }
    }
}

/// A connection ready for HTTP, and what it holds until it closes.
struct Conn {
    live: Arc<Live>,
    idx: usize,
    /// The socket's peer, or the client a trusted PROXY header named.
    client: IpAddr,
    /// The peer is a trusted proxy whose `X-Forwarded-For` names the client.
    xff: bool,
    in_flight: Arc<InFlight>,
    stop: watch::Receiver<bool>,
    /// mTLS: what the client's certificate says, for the peer binding check.
    client_cert: Option<Arc<PresentedCert>>,
    _slot: ConnSlot,
    _done: mpsc::Sender<()>,
}

/// Timestamps (ms since the connection opened) the watchdog reads.
struct Activity {
    opened: Instant,
    in_progress: AtomicUsize,
    served: AtomicU64,
    idle_since_ms: AtomicU64,
    /// When the first byte of a new request head arrived; 0 while none has.
    head_started_ms: AtomicU64,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }
}

/// The connection's stream, noting when a new request starts arriving.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.activity.in_progress.load(Ordering::Relaxed) == 0
            && self.activity.head_started_ms.load(Ordering::Relaxed) == 0
        {
            let now = self.activity.now_ms();
            self.activity.head_started_ms.store(now, Ordering::Relaxed);
        }
        r
    }
}

crate::delegate_async_write!(Watched);

/// One request's handling, as the connection holds it while it runs.
type HandleFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    http::Response<http_body_util::Full<bytes::Bytes>>,
                    std::convert::Infallible,
                >,
            > + Send,
    >,
>;

async fn serve_http<S>(conn: Conn, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        live,
        idx,
        client,
        xff,
        in_flight,
        mut stop,
        client_cert,
        ..
    } = conn;
    let rt = live.load();
    let Some(name) = rt.listeners.get(idx).map(|l| l.name.clone()) else {
        return;
    };
    let gauge = OpenGauge::new(rt.metrics.connections.with_label_values(&[&name]));
    let limits = rt.settings.limits.clone();
    drop(rt);
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        in_progress: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        idle_since_ms: AtomicU64::new(1),
        head_started_ms: AtomicU64::new(0),
    });
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let svc = {
        let activity = activity.clone();
        service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            if let Some(c) = &client_cert {
                req.extensions_mut().insert(c.clone());
            }
            // Each request runs to the end on the runtime current when it started.
            let rt = live.load();
            let trusted = rt
                .settings
                .listeners
                .get(idx)
                .and_then(|l| l.trusted_proxies.as_ref());
            let client = match (trusted, xff) {
                (Some(trusted), true) => {
                    proxy::client_from_forwarded(client, req.headers(), trusted)
                }
                _ => client,
            };
            let in_flight = in_flight.clone();
            let activity = activity.clone();
            // Boxed per request: hyper keeps room for the service's future in every
            // connection, busy or idle, and the pipeline's future is several KiB.
            let handling: HandleFuture = Box::pin(async move {
                activity.in_progress.fetch_add(1, Ordering::Relaxed);
                activity.head_started_ms.store(0, Ordering::Relaxed);
                let r = pipeline::handle(rt, in_flight, idx, client, req).await;
                activity.served.fetch_add(1, Ordering::Relaxed);
                activity
                    .idle_since_ms
                    .store(activity.now_ms(), Ordering::Relaxed);
                activity.in_progress.fetch_sub(1, Ordering::Relaxed);
                r
            });
            handling
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(!limits.keepalive_idle.is_zero())
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 64 * 1024)
        .max_headers(100);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);

    let header_ms = limits.header_read_timeout.as_millis() as u64;
    let idle_ms = limits.keepalive_idle.as_millis() as u64;
    let tick = Duration::from_millis((header_ms.min(idle_ms.max(1)) / 4).clamp(20, 1000));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = *stop.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = %name, error = %e, "connection ended with error");
                }
                break;
            }
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticker.tick() => {
                if activity.in_progress.load(Ordering::Relaxed) > 0 {
                    continue;
                }
                let now = activity.now_ms();
                let head = activity.head_started_ms.load(Ordering::Relaxed);
                if head != 0 {
                    if now.saturating_sub(head) > header_ms {
                        tracing::debug!(listener = %name, "request head not complete in time; closing");
                        break;
                    }
                } else if !closing {
                    let limit = if activity.served.load(Ordering::Relaxed) == 0 { header_ms } else { idle_ms };
                    if now.saturating_sub(activity.idle_since_ms.load(Ordering::Relaxed)) > limit {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
    drop(gauge);
}
