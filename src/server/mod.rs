//! Listeners: accept loop, connection caps, accept-time allowlist, PROXY protocol and
//! TLS handshake, HTTP/1.1 timeouts, and graceful drain on shutdown.
//!
//! The runtime in force is read from [`Live`] for each connection (caps, allowlist,
//! certificate) and each request, so a reload applies to the next request without
//! dropping a connection.
//!
//! HTTP/1.1 itself is spoken by [`h1`]. Per connection, a small watchdog enforces the
//! deadlines: a request head must arrive within `header_read_timeout` once it has started
//! (or once the connection opened), and an idle keep-alive connection is closed after
//! `keepalive_idle`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::error;
use crate::forward::Answer;
use crate::guard::client_cert::PresentedCert;
use crate::guard::ip::canonical;
use crate::guard::log_budget::LogBudget;
use crate::guard::proxy::{self, ProxyHeader, Rewind};
use crate::pipeline;
use crate::reload::Live;
use crate::runtime::{ListenerRt, Runtime};
use crate::tls::TlsState;
use crate::workers::Workers;

mod h1;

#[doc(hidden)]
pub use h1::{read_all as read_requests, Read};

/// Listeners bound and connection workers started before serving, so callers (tests, the
/// demo) can learn the ports.
pub struct Bound {
    pub listeners: Vec<(usize, TcpListener)>,
    pub admin: Option<TcpListener>,
    pub workers: Workers,
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
    let workers = Workers::start(crate::workers::count(rt.settings.limits.workers))
        .map_err(|e| io::Error::new(e.kind(), format!("starting connection workers: {e}")))?;
    Ok(Bound {
        listeners,
        admin,
        workers,
    })
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
            crate::guard::dns::refresh(&rt.names, dns.refresh, &r, &rt.metrics, &rt.clock, true)
                .await;
        }
        Err(e) => tracing::error!(error = %e, "cannot set up the DNS resolver"),
    }
    let background = [
        tokio::spawn(crate::background::resolve_names(live.clone())),
        tokio::spawn(crate::background::watch_certificates(live.clone())),
        tokio::spawn(crate::background::prune_address_buckets(live.clone())),
    ];
    let watchdog = crate::systemd::spawn_watchdog();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; when all are gone, the drain is complete.
    let (done_tx, done_rx) = mpsc::channel::<()>(1);
    let ready = Arc::new(AtomicBool::new(true));
    let conns = Arc::new(Connections {
        total: AtomicUsize::new(0),
        per_ip: Mutex::new(HashMap::new()),
    });

    let workers = Arc::new(bound.workers);
    let refusal_log = Arc::new(LogBudget::refusals());
    let mut accept_tasks = Vec::new();
    for (idx, listener) in bound.listeners {
        accept_tasks.push(tokio::spawn(accept_loop(
            live.clone(),
            idx,
            listener,
            Shared {
                workers: workers.clone(),
                conns: conns.clone(),
                stop: stop_rx.clone(),
                done: done_tx.clone(),
                refusal_log: refusal_log.clone(),
            },
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
    for t in background.iter().chain(&watchdog) {
        t.abort();
    }
    let grace = live.load().settings.limits.shutdown_grace;
    drain(grace, done_rx).await;
    // The workers stop with the last reference: connections still open past the grace
    // period close with their runtimes.
    drop(workers);
}

/// What every accept loop shares: where connections run, the caps they count against,
/// and the drain signals.
struct Shared {
    workers: Arc<Workers>,
    conns: Arc<Connections>,
    stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
    /// The log lines refused connections may write, shared by every listener.
    refusal_log: Arc<LogBudget>,
}

/// An info line about a refused connection, within `budget`: a flood of refusals writes
/// a burst, then a few a second, each saying how many were left out before it.
macro_rules! refusal_line {
    ($budget:expr, $($line:tt)+) => {
        match $budget.admit() {
            Some(0) => tracing::info!($($line)+),
            Some(left_out) => tracing::info!(suppressed = left_out, $($line)+),
            None => {}
        }
    };
}

/// Waits until every connection task has ended (each holds a sender of `done`), or
/// `grace` has passed.
async fn drain(grace: Duration, mut done: mpsc::Receiver<()>) {
    match tokio::time::timeout(grace, done.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            grace_secs = grace.as_secs(),
            "drain deadline passed; closing remaining connections"
        ),
    }
}

async fn accept_loop(live: Arc<Live>, idx: usize, listener: TcpListener, shared: Shared) {
    let mut stop = shared.stop.clone();
    let Some(name) = live.load().listeners.get(idx).map(|l| l.name.clone()) else {
        return;
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = %name, %addr, "listening");
    }
    // Accepted as plain sockets: a refused connection is closed without ever being
    // registered with a reactor, and an admitted one is registered once, on its worker
    // (a refusal costs 0.88x the CPU: BENCHMARKS.md). `AsyncFd::new` is deprecated
    // because a type could close its descriptor while it is registered; the listener
    // here is owned by the `AsyncFd` and closed only when it is dropped.
    #[allow(deprecated)]
    let listener = match listener.into_std().and_then(AsyncFd::new) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot watch the listening socket");
            return;
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = accept(&listener) => match r {
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
        let Some(lst) = rt.listeners.get(idx) else {
            return;
        };
        let via_proxy = (lst.trusted_proxies.as_ref()).is_some_and(|t| t.contains_address(ip));
        if !via_proxy {
            if let Some(allow) = &lst.accept_allow {
                if !allow.contains(ip, &rt.names) {
                    refuse("ip_denied");
                    refusal_line!(shared.refusal_log, listener = %name, client = %ip, "connection refused: address not allowed");
                    reset(stream);
                    continue;
                }
            }
        }
        let per_ip_cap = if via_proxy {
            usize::MAX
        } else {
            limits.max_connections_per_ip
        };
        let slot = match shared.conns.admit(ip, limits.max_connections, per_ip_cap) {
            Ok(s) => s,
            Err(reason) => {
                refuse(reason);
                reset(stream);
                continue;
            }
        };
        shared.hand_off(&live, idx, stream, ip, via_proxy, slot);
    }
}

/// Closes a connection refused at accept with a reset (`SO_LINGER` 0): its kernel state
/// is freed at once, where an orderly close keeps it (`FIN_WAIT`, then `TIME_WAIT`) for
/// up to a minute after every refusal — state a stranger's flood of connections would
/// otherwise pile up.
fn reset(stream: std::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "SO_LINGER not set; the refused connection closes in order");
    }
}

/// The next connection on `listener` (non-blocking), as a socket no reactor watches yet.
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
            return accepted;
        }
    }
}

impl Shared {
    /// Hands an admitted connection to the next worker, whose reactor registers it (on
    /// that worker's thread) and where it is served until it closes.
    fn hand_off(
        &self,
        live: &Arc<Live>,
        idx: usize,
        stream: std::net::TcpStream,
        ip: IpAddr,
        via_proxy: bool,
        slot: ConnSlot,
    ) {
        let _ = stream.set_nodelay(true);
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!(client = %ip, error = %e, "cannot hand the connection to a worker");
            return;
        }
        let live = live.clone();
        let (stop, done) = (self.stop.clone(), self.done.clone());
        let refusal_log = self.refusal_log.clone();
        self.workers.spawn(move || async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    open_connection(
                        live,
                        idx,
                        stream,
                        ip,
                        via_proxy,
                        slot,
                        stop,
                        done,
                        refusal_log,
                    )
                    .await
                }
                Err(e) => {
                    tracing::warn!(client = %ip, error = %e, "cannot register the connection with its worker")
                }
            }
        });
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
    stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
    refusal_log: Arc<LogBudget>,
) {
    let rt = live.load();
    let Some(lst) = rt.listeners.get(idx) else {
        return;
    };
    let proxy_protocol = lst.proxy_protocol;
    let refuse = |reason: &str| {
        rt.metrics
            .connections_refused
            .with_label_values(&[&lst.name, reason])
            .inc();
    };
    let (client, prefix) = if via_proxy && proxy_protocol {
        let deadline = rt.settings.limits.header_read_timeout;
        match read_proxy_header(&rt, lst, &mut stream, peer, deadline, &refusal_log).await {
            Ok(found) => found,
            Err(reason) => return refuse(reason),
        }
    } else {
        (peer, Vec::new())
    };
    let stream = Rewind::new(stream, prefix);
    let conn = Conn {
        live: live.clone(),
        idx,
        client,
        xff: via_proxy && !proxy_protocol,
        stop,
        client_cert: None,
        _slot: slot,
        _done: done,
    };
    match &lst.tls {
        None => serve_http(conn, stream).await,
        Some(tls) => {
            // Boxed: the handshake and the TLS session are several KiB, and a future
            // holding them inline would make every plain connection's task that large.
            Box::pin(serve_https(
                conn,
                stream,
                tls,
                &lst.name,
                refuse,
                &refusal_log,
            ))
            .await;
        }
    }
}

/// The PROXY header a trusted hop sends first: the client it names (checked against
/// the listener's accept-time allowlist) and the bytes read past the header.
async fn read_proxy_header(
    rt: &Runtime,
    lst: &ListenerRt,
    stream: &mut TcpStream,
    peer: IpAddr,
    deadline: Duration,
    refusal_log: &LogBudget,
) -> Result<(IpAddr, Vec<u8>), &'static str> {
    let (header, rest) = match tokio::time::timeout(deadline, proxy::read_header(stream)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            refusal_line!(refusal_log, listener = %lst.name, proxy = %peer, error = %e, "connection refused: bad PROXY header");
            return Err("proxy_header");
        }
        Err(_) => return Err("proxy_header"),
    };
    let client = match header {
        ProxyHeader::Proxied(src) => canonical(src.ip()),
        _ => peer,
    };
    if let Some(allow) = &lst.accept_allow {
        if !allow.contains(client, &rt.names) {
            refusal_line!(refusal_log, listener = %lst.name, client = %client, "connection refused: address not allowed");
            return Err("ip_denied");
        }
    }
    Ok((client, rest))
}

/// The TLS handshake within its deadline, then HTTP. A failed handshake is counted by `refuse` before the connection closes, so whoever
/// sees it closed also sees it counted.
async fn serve_https<S>(
    conn: Conn,
    stream: S,
    tls: &TlsState,
    listener: &str,
    refuse: impl Fn(&'static str),
    refusal_log: &LogBudget,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = conn.client;
    let handshake = tls.acceptor().accept(stream).into_fallible();
    tokio::pin!(handshake);
    match tokio::time::timeout(tls.handshake_timeout(), &mut handshake).await {
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
            .await;
        }
        Ok(Err((e, stream))) => {
            refusal_line!(refusal_log, listener, client = %client, error = %e, "TLS handshake failed");
            refuse("tls_handshake");
            drop(stream);
        }
        Err(_) => {
            refusal_line!(refusal_log, listener, client = %client, "TLS handshake timed out");
            refuse("tls_handshake_timeout");
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
    stop: watch::Receiver<bool>,
    /// mTLS: what the client's certificate says, for the peer binding check.
    client_cert: Option<Arc<PresentedCert>>,
    _slot: ConnSlot,
    _done: mpsc::Sender<()>,
}

/// Timestamps (ms since the connection opened) the watchdog reads. Its deadlines are
/// seconds long and its pause a tenth of one, so the coarse clock serves: a request's
/// first read notes the time, and a precise read of the clock costs five times as much.
struct Activity {
    /// The coarse monotonic clock when the connection opened (ms).
    opened_ms: u64,
    in_progress: AtomicUsize,
    served: AtomicU64,
    idle_since_ms: AtomicU64,
    /// When the first byte of a new request head arrived; 0 while none has.
    head_started_ms: AtomicU64,
    /// `PARK_NO`, `PARK_ASKED` or `PARK_DONE`.
    park: AtomicU8,
    /// After a 429, the connection is not read from before this (ms); 0: not paused.
    paused_until_ms: AtomicU64,
    /// An answer is still being written: bytes went out (or waited for room) since the
    /// last completed flush. The connection flushes once the whole answer is written, so
    /// while this is set the connection is not idle, however long ago its request was
    /// answered — a slow reader of a large document is not taken for a quiet connection.
    unflushed: AtomicBool,
    /// Since when (ms) the watchdog has seen an unflushed answer make no progress; 0 once
    /// any of it is written.
    stall_since_ms: AtomicU64,
    /// The stream can be parked (plain TCP).
    parkable: bool,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        crate::clock::coarse::monotonic_ms().saturating_sub(self.opened_ms) + 1
    }
}

/// How long a connection answered 429 goes unread: a client told to come back in at
/// least a second (`Retry-After`) that sends on at once costs a refusal per pause, not
/// one per request it can write — so a flood past a rate limit spends little of the CPU
/// the peers within theirs need. Short, so a client that does wait never notices.
const PAUSE_AFTER_429_MS: u64 = 100;

/// The connection's stream, noting when a new request starts arriving, and holding back
/// reads while the connection is paused after a 429.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Watched<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            activity,
            pause: None,
        }
    }

    /// Pending while the connection is paused (woken when the pause ends).
    fn poll_pause(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let until = self.activity.paused_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Poll::Ready(());
        }
        let left = until.saturating_sub(self.activity.now_ms());
        if left > 0 {
            let sleep = self
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(left))));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.pause = None;
        self.activity.paused_until_ms.store(0, Ordering::Relaxed);
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.poll_pause(cx).is_pending() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let a = &self.activity;
        let asked = a.park.load(Ordering::Relaxed) == PARK_ASKED;
        let between = a.in_progress.load(Ordering::Relaxed) == 0
            && a.head_started_ms.load(Ordering::Relaxed) == 0
            && !a.unflushed.load(Ordering::Relaxed);
        if r.is_pending() {
            if asked && between {
                // Nothing arriving between requests: the connection's loop reads the end
                // of input and lets the stream go without closing the socket (it is
                // parked).
                a.park.store(PARK_DONE, Ordering::Relaxed);
                return Poll::Ready(Ok(()));
            }
        } else if buf.filled().len() > before {
            if asked {
                // A request came before the park: serve on.
                a.park.store(PARK_NO, Ordering::Relaxed);
            }
            if between {
                a.head_started_ms.store(a.now_ms(), Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S> Watched<S> {
    /// Notes a write's outcome: anything but an error leaves an answer unflushed, and
    /// bytes written are progress.
    fn wrote(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        let a = &self.activity;
        match r {
            Poll::Ready(Err(_)) => {}
            Poll::Ready(Ok(_)) => {
                a.unflushed.store(true, Ordering::Relaxed);
                a.stall_since_ms.store(0, Ordering::Relaxed);
            }
            Poll::Pending => a.unflushed.store(true, Ordering::Relaxed),
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// Called once a whole answer is written: it has left, and the connection's idle
    /// time starts now.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        let a = &self.activity;
        if matches!(r, Poll::Ready(Ok(()))) && a.unflushed.swap(false, Ordering::Relaxed) {
            a.idle_since_ms.store(a.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_http<S>(conn: Conn, stream: S)
where
    S: Park + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let rt = conn.live.load();
    let Some(name) = rt.listeners.get(conn.idx).map(|l| l.name.clone()) else {
        return;
    };
    let gauge = OpenGauge::new(rt.metrics.connections.with_label_values(&[&name]));
    let parked_gauge = rt.metrics.connections_parked.with_label_values(&[&name]);
    let limits = rt.settings.limits.clone();
    drop(rt);
    let activity = Arc::new(Activity {
        opened_ms: crate::clock::coarse::monotonic_ms(),
        in_progress: AtomicUsize::new(0),
        served: AtomicU64::new(0),
        idle_since_ms: AtomicU64::new(1),
        head_started_ms: AtomicU64::new(0),
        park: AtomicU8::new(PARK_NO),
        paused_until_ms: AtomicU64::new(0),
        unflushed: AtomicBool::new(false),
        stall_since_ms: AtomicU64::new(0),
        parkable: stream.parkable(),
    });
    let mut stop = conn.stop.clone();
    // A connection accepted just before a drain started is finished at once.
    let closing = *stop.borrow();
    let settings = h1::Settings {
        max_head: limits.max_header_bytes,
        keep_alive: !limits.keepalive_idle.is_zero(),
    };
    let deadlines = Deadlines {
        header_ms: limits.header_read_timeout.as_millis() as u64,
        idle_ms: limits.keepalive_idle.as_millis() as u64,
    };
    let requests = Requests {
        conn: &conn,
        activity: &activity,
    };
    let mut phase = Phase {
        settings: &settings,
        requests: &requests,
        activity: &activity,
        deadlines: &deadlines,
        stop: &mut stop,
        closing,
        name: &name,
    };
    let mut stream = stream;
    // Served while requests come; parked without a read buffer or serving state while
    // it waits for bytes: between requests, and before a plain connection's first, so
    // a connection that sends nothing holds only its socket.
    let mut waiting = activity.parkable;
    loop {
        if waiting {
            let counted = OpenGauge::new(parked_gauge.clone());
            let woken = phase.parked(stream).await;
            drop(counted);
            match woken {
                Some(s) => stream = s,
                None => break,
            }
        }
        match phase.serve(stream).await {
            Some(s) => stream = s,
            None => break,
        }
        waiting = true;
    }
    drop(gauge);
}

/// A connection stream that can wait for its next bytes without a buffer, so a
/// connection waiting for a request is held without its read buffer and serving state.
/// Plain TCP only: a TLS session keeps its own buffers, and is not parked.
trait Park {
    fn parkable(&self) -> bool;
    /// Ready once there are bytes to read (or the peer has closed).
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Bytes read and not used, to be read again first.
    fn unread(&mut self, bytes: &[u8]);
}

impl Park for Rewind<TcpStream> {
    fn parkable(&self) -> bool {
        true
    }

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_prefix() {
            return Poll::Ready(Ok(()));
        }
        self.get_mut().poll_read_ready(cx)
    }

    fn unread(&mut self, bytes: &[u8]) {
        Rewind::unread(self, bytes)
    }
}

impl<S> Park for tokio_rustls::server::TlsStream<S> {
    fn parkable(&self) -> bool {
        false
    }

    fn poll_readable(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn unread(&mut self, _: &[u8]) {}
}

/// How long a keep-alive connection stays idle before it is parked (or half of
/// `keepalive_idle`, when that is shorter): long enough that a client sending requests back
/// to back never pays for a park and a new read buffer, short enough that a wave of clients
/// that each send one request and keep the connection does not hold a buffer each.
const PARK_AFTER_MS: u64 = 100;

/// `Activity::park`: not parking; asked to park (the next read that would wait ends the
/// connection's loop instead); parked that way (not the client's end of input).
const PARK_NO: u8 = 0;
const PARK_ASKED: u8 = 1;
const PARK_DONE: u8 = 2;

/// What serving one connection needs across its serving and parked phases.
struct Phase<'a> {
    settings: &'a h1::Settings,
    requests: &'a Requests<'a>,
    activity: &'a Arc<Activity>,
    deadlines: &'a Deadlines,
    stop: &'a mut watch::Receiver<bool>,
    /// Draining: no new request is started.
    closing: bool,
    name: &'a str,
}

/// What ended one wait of [`Phase::serve`].
enum Event {
    /// The connection's loop returned: closed, failed, or parked.
    Conn(io::Result<()>),
    /// A drain started.
    Stop,
    /// The watchdog's tick.
    Tick,
}

/// The waker [`Phase::serve`] gives its tick and drain signal: it notes that one of them
/// is due to be polled, then wakes the connection's task.
#[derive(Default)]
struct Nudge {
    due: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Phase<'_> {
    /// Serves requests until the connection ends (`None`) or is parked, which gives back
    /// the stream.
    async fn serve<S>(&mut self, stream: S) -> Option<S>
    where
        S: Park + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let parkable = self.activity.parkable;
        let mut io = Watched::new(stream, self.activity.clone());
        let mut buf = BytesMut::new();
        // Set on a drain or at the idle deadline: the loop takes no request after the one
        // it is reading or answering.
        let finishing = AtomicBool::new(self.closing);
        // Boxed: parked, the connection frees its serving state.
        let mut conn = Box::pin(h1::serve(
            &mut io,
            &mut buf,
            self.settings,
            &finishing,
            self.requests,
        ));
        let mut ticker = tokio::time::interval(self.deadlines.tick());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The watchdog's tick and the drain signal wake the task through `nudge`, so
        // they are polled only after one of them woke it, not on each of the several
        // wake-ups of every request (its reads, writes and upstream exchange).
        let nudge = Arc::new(Nudge::default());
        let nudge_waker = std::task::Waker::from(nudge.clone());
        loop {
            nudge.due.store(true, Ordering::Relaxed);
            let stop = self.stop.changed();
            tokio::pin!(stop);
            let closing = self.closing;
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Conn(r));
                }
                nudge.task.register(cx.waker());
                if nudge.due.swap(false, Ordering::AcqRel) {
                    let mut side = Context::from_waker(&nudge_waker);
                    if !closing && stop.as_mut().poll(&mut side).is_ready() {
                        return Poll::Ready(Event::Stop);
                    }
                    if ticker.poll_tick(&mut side).is_ready() {
                        return Poll::Ready(Event::Tick);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Conn(r) => {
                    drop(conn);
                    if let Err(e) = r {
                        tracing::debug!(listener = %self.name, error = %e, "connection ended with error");
                        return None;
                    }
                    let parked = self.activity.park.swap(PARK_NO, Ordering::Relaxed) == PARK_DONE;
                    let mut stream = io.inner;
                    if !parked {
                        // The connection closes: a TLS close_notify, a FIN, within the
                        // head deadline.
                        let wait = Duration::from_millis(self.deadlines.header_ms.max(1));
                        let _ = tokio::time::timeout(wait, stream.shutdown()).await;
                        return None;
                    }
                    stream.unread(&buf);
                    return Some(stream);
                }
                Event::Stop => {
                    self.closing = true;
                    finishing.store(true, Ordering::Relaxed);
                }
                Event::Tick => match self.deadlines.check(self.activity, self.closing) {
                    Watchdog::Wait => {}
                    Watchdog::Idle(ms) if parkable && ms >= self.deadlines.park_after_ms() => {
                        // The next read that would wait ends the loop (see `Watched`),
                        // which then hands the stream back.
                        self.activity.park.store(PARK_ASKED, Ordering::Relaxed);
                    }
                    Watchdog::Idle(_) => {}
                    Watchdog::Close => {
                        tracing::debug!(listener = %self.name, "request head not complete in time; closing");
                        return None;
                    }
                    Watchdog::Stalled => {
                        tracing::debug!(listener = %self.name, "answer not read for keepalive_idle; closing");
                        return None;
                    }
                    Watchdog::Finish => {
                        self.closing = true;
                        finishing.store(true, Ordering::Relaxed);
                    }
                },
            }
        }
    }

    /// Holds a parked connection until its next bytes arrive (the stream, to be served
    /// again), or until it has waited for its first request for `header_read_timeout`,
    /// or for a later one for `keepalive_idle`, or a drain starts (`None`: closed, as an
    /// idle connection is).
    async fn parked<S: Park>(&mut self, mut stream: S) -> Option<S> {
        if self.closing {
            return None;
        }
        let a = self.activity;
        let limit = self.deadlines.waiting_ms(a);
        let left = (a.idle_since_ms.load(Ordering::Relaxed) + limit).saturating_sub(a.now_ms());
        tokio::select! {
            r = std::future::poll_fn(|cx| stream.poll_readable(cx)) => r.ok().map(|()| stream),
            _ = self.stop.changed() => None,
            _ = tokio::time::sleep(Duration::from_millis(left)) => None,
        }
    }
}

/// Each request of a connection into the pipeline, on the runtime current when the
/// request started.
struct Requests<'c> {
    /// The whole `Conn` lives as long as the connection: its connection slot and drain
    /// sender are released when it ends.
    conn: &'c Conn,
    activity: &'c Arc<Activity>,
}

impl h1::Service for Requests<'_> {
    /// The runtime the last request used, with its reload generation, while the
    /// connection is served ([`Live::current`]); let go when it parks, so an idle
    /// connection keeps no runtime a reload replaced.
    type Kept = Option<(u64, Arc<Runtime>)>;

    fn call<'a>(
        &self,
        kept: &'a mut Self::Kept,
        mut req: pipeline::Request<h1::ReqBody<'a>>,
    ) -> impl Future<Output = Answer> + Send + 'a {
        let conn = self.conn;
        req.client_cert.clone_from(&conn.client_cert);
        let rt: &'a Runtime = conn.live.current(kept);
        let idx = conn.idx;
        let trusted = rt
            .listeners
            .get(idx)
            .and_then(|l| l.trusted_proxies.as_ref());
        let client = match (trusted, conn.xff) {
            (Some(trusted), true) => {
                let forwarded = &proxy::X_FORWARDED_FOR;
                proxy::client_from_forwarded(conn.client, req.fields.get_all(forwarded), trusted)
            }
            _ => conn.client,
        };
        let activity = self.activity.clone();
        activity.in_progress.fetch_add(1, Ordering::Relaxed);
        activity.head_started_ms.store(0, Ordering::Relaxed);
        // The pipeline's future is made when this is first polled, in the place the
        // connection's serving state keeps for it (`h1::serve`'s own future), not boxed
        // per request: no allocation and no copy of its 2 KiB a request. A connection
        // parked between requests frees that state with the rest (`Phase::serve`).
        async move {
            let answer = match std::pin::pin!(pipeline::handle(rt, idx, client, req)).await {
                Ok(answer) => answer,
                Err(never) => match never {},
            };
            answered(&activity, answer.status);
            answer
        }
    }

    fn refuse(&self, status: http::StatusCode) -> Answer {
        let reject = match status {
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => error::Reject::HeadTooLarge,
            http::StatusCode::URI_TOO_LONG => error::Reject::UriTooLong,
            _ => error::Reject::BadRequest("request is not well-formed HTTP/1.1"),
        };
        Answer::from(reject.to_response(&self.conn.live.load().next_request_id()))
    }

    fn head_begun(&self) {
        let a = self.activity;
        if a.head_started_ms.load(Ordering::Relaxed) == 0 {
            a.head_started_ms.store(a.now_ms(), Ordering::Relaxed);
        }
    }
}

/// The connection's bookkeeping once a request is answered with `status`.
fn answered(activity: &Activity, status: http::StatusCode) {
    if status == http::StatusCode::TOO_MANY_REQUESTS {
        let until = activity.now_ms() + PAUSE_AFTER_429_MS;
        activity.paused_until_ms.store(until, Ordering::Relaxed);
    }
    // The idle time starts when the answer has left (`Watched::poll_flush`).
    let before = activity.served.fetch_add(1, Ordering::Relaxed);
    if before == 0 && activity.parkable {
        // After its first answer a connection parks as soon as nothing more is there
        // to read: most callers send one request and keep the connection, and a wave
        // of them would otherwise each hold a read buffer for `PARK_AFTER_MS`. A
        // client that sends on at once pays for one park, once.
        activity.park.store(PARK_ASKED, Ordering::Relaxed);
    }
    activity.in_progress.fetch_sub(1, Ordering::Relaxed);
}

/// What the watchdog decides on a tick.
#[derive(Debug, PartialEq, Eq)]
enum Watchdog {
    Wait,
    /// Idle between requests for this many ms, within the deadline.
    Idle(u64),
    /// A request head started and did not complete in time: close now.
    Close,
    /// Idle past the deadline: finish gracefully.
    Finish,
    /// An answer's client has read nothing of it for the idle deadline: close now.
    Stalled,
}

/// The two deadlines the watchdog holds, in ms.
struct Deadlines {
    header_ms: u64,
    idle_ms: u64,
}

impl Deadlines {
    fn park_after_ms(&self) -> u64 {
        PARK_AFTER_MS.min(self.idle_ms / 2)
    }

    /// Often enough to hold either deadline to within a quarter of it, and to park an idle
    /// connection within twice `park_after_ms`.
    fn tick(&self) -> Duration {
        let quarter = (self.header_ms.min(self.idle_ms.max(1)) / 4).clamp(20, 1000);
        Duration::from_millis(quarter.min(self.park_after_ms().max(20)))
    }

    /// How long a connection may wait for a request, from its opening or its last
    /// answer: before the first request the head deadline applies; after one, the idle
    /// one. The watchdog and a parked connection both hold it.
    fn waiting_ms(&self, activity: &Activity) -> u64 {
        match activity.served.load(Ordering::Relaxed) {
            0 => self.header_ms,
            _ => self.idle_ms,
        }
    }

    fn check(&self, activity: &Activity, closing: bool) -> Watchdog {
        if activity.in_progress.load(Ordering::Relaxed) > 0 {
            return Watchdog::Wait;
        }
        let now = activity.now_ms();
        if activity.unflushed.load(Ordering::Relaxed) {
            return self.check_writing(activity, now);
        }
        activity.stall_since_ms.store(0, Ordering::Relaxed);
        let head = activity.head_started_ms.load(Ordering::Relaxed);
        if head != 0 {
            return if now.saturating_sub(head) > self.header_ms {
                Watchdog::Close
            } else {
                Watchdog::Wait
            };
        }
        if closing {
            return Watchdog::Wait;
        }
        let limit = self.waiting_ms(activity);
        let idle = now.saturating_sub(activity.idle_since_ms.load(Ordering::Relaxed));
        if idle > limit {
            Watchdog::Finish
        } else if activity.served.load(Ordering::Relaxed) == 0 {
            Watchdog::Wait
        } else {
            Watchdog::Idle(idle)
        }
    }

    /// An answer is being written: the connection is busy while its client reads, however
    /// slowly, but one that reads nothing for `keepalive_idle` (or the head's deadline,
    /// when longer) is closed — a stalled write would otherwise hold the connection and
    /// its buffers for ever.
    fn check_writing(&self, activity: &Activity, now: u64) -> Watchdog {
        let since = activity.stall_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            activity.stall_since_ms.store(now, Ordering::Relaxed);
            return Watchdog::Wait;
        }
        // `header_ms` when longer: with keep-alive off (`keepalive_idle: 0`) a slow reader
        // still has the head's deadline between two reads.
        if now.saturating_sub(since) > self.idle_ms.max(self.header_ms) {
            Watchdog::Stalled
        } else {
            Watchdog::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(in_progress: usize, served: u64, idle_since: u64, head: u64) -> Activity {
        Activity {
            // Opened 10 s ago: `now_ms()` reads about 10_001.
            opened_ms: crate::clock::coarse::monotonic_ms().saturating_sub(10_000),
            in_progress: AtomicUsize::new(in_progress),
            served: AtomicU64::new(served),
            idle_since_ms: AtomicU64::new(idle_since),
            head_started_ms: AtomicU64::new(head),
            park: AtomicU8::new(PARK_NO),
            paused_until_ms: AtomicU64::new(0),
            unflushed: AtomicBool::new(false),
            stall_since_ms: AtomicU64::new(0),
            parkable: true,
        }
    }

    /// One request's bookkeeping, from its start to its answer with `status`.
    fn handled(activity: &Arc<Activity>, status: http::StatusCode) {
        activity.in_progress.fetch_add(1, Ordering::Relaxed);
        answered(activity, status);
        assert_eq!(activity.in_progress.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_connection_parks_after_its_first_answer_and_not_after_later_ones() {
        let a = Arc::new(activity(0, 0, 1, 0));
        handled(&a, http::StatusCode::OK);
        assert_eq!(a.park.load(Ordering::Relaxed), PARK_ASKED);
        assert_eq!(a.served.load(Ordering::Relaxed), 1);
        // A request came before the park: later answers leave parking to the watchdog.
        a.park.store(PARK_NO, Ordering::Relaxed);
        handled(&a, http::StatusCode::OK);
        assert_eq!(a.park.load(Ordering::Relaxed), PARK_NO);
        // A TLS connection is never parked.
        let tls = Arc::new(Activity {
            parkable: false,
            ..activity(0, 0, 1, 0)
        });
        handled(&tls, http::StatusCode::OK);
        assert_eq!(tls.park.load(Ordering::Relaxed), PARK_NO);
    }

    #[test]
    fn the_watchdog_holds_the_head_and_idle_deadlines() {
        let d = Deadlines {
            header_ms: 2_000,
            idle_ms: 5_000,
        };
        // A request in progress is never cut.
        assert_eq!(d.check(&activity(1, 0, 1, 1), false), Watchdog::Wait);
        // A head started 9 s ago and still incomplete: closed at once.
        assert_eq!(d.check(&activity(0, 3, 1, 1_000), false), Watchdog::Close);
        // A head started just now: wait.
        assert_eq!(d.check(&activity(0, 3, 1, 9_500), false), Watchdog::Wait);
        // No request yet after 10 s: the head deadline applies, finish gracefully.
        assert_eq!(d.check(&activity(0, 0, 1, 0), false), Watchdog::Finish);
        // Idle 3 s after a request: within keepalive_idle, and how long is told (to park).
        assert!(matches!(
            d.check(&activity(0, 1, 7_000, 0), false),
            Watchdog::Idle(ms) if (3_000..3_100).contains(&ms)
        ));
        // Idle 6 s after a request: past it.
        assert_eq!(d.check(&activity(0, 1, 4_000, 0), false), Watchdog::Finish);
        // Already finishing: nothing more to decide.
        assert_eq!(d.check(&activity(0, 1, 4_000, 0), true), Watchdog::Wait);
        // An answer still being written, 6 s after it was made: not idle while its client
        // reads some of it at each look...
        let writing = activity(0, 1, 4_000, 0);
        writing.unflushed.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(d.check(&writing, false), Watchdog::Wait);
            writing.stall_since_ms.store(0, Ordering::Relaxed); // some of it written
        }
        // ...and closed once it has read nothing for keepalive_idle.
        assert_eq!(d.check(&writing, false), Watchdog::Wait);
        writing.stall_since_ms.store(4_000, Ordering::Relaxed);
        assert_eq!(d.check(&writing, false), Watchdog::Stalled);
        // Keep-alive off: the head's deadline between two reads, not none.
        let no_keepalive = Deadlines {
            header_ms: 2_000,
            idle_ms: 0,
        };
        writing.stall_since_ms.store(9_000, Ordering::Relaxed);
        assert_eq!(no_keepalive.check(&writing, false), Watchdog::Wait);
        writing.stall_since_ms.store(7_000, Ordering::Relaxed);
        assert_eq!(no_keepalive.check(&writing, false), Watchdog::Stalled);
        writing.stall_since_ms.store(4_000, Ordering::Relaxed);
        // The answer left: an idle connection again, and the stall forgotten.
        writing.unflushed.store(false, Ordering::Relaxed);
        assert_eq!(d.check(&writing, false), Watchdog::Finish);
        assert_eq!(writing.stall_since_ms.load(Ordering::Relaxed), 0);
        assert_eq!(d.tick(), Duration::from_millis(PARK_AFTER_MS));
    }
}
