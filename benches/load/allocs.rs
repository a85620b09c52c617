//! Heap allocations per request through the sidecar's whole pipeline, counted by a
//! counting global allocator: the sidecar runs in this process (the same multi-thread
//! runtime as `bsk-sidecar run`) on a `[token, jwt, aes]` route with freshness and replay
//! protection, between a blocking client and a stub upstream that allocate nothing per
//! request, so every allocation counted is the sidecar's.
//!
//! It also prints the size of one request's pipeline future: the room a connection's
//! serving state keeps for it while the connection is served.
//!
//!   cargo run --release --features bench-tools --bin load-allocs [REQUESTS]

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bsk_sidecar::envelope::aes::AesKey;
use bsk_sidecar::envelope::jwt::JwtKey;
use bsk_sidecar::envelope::{self, BodyShape, Layer, PeerKeys};
use bsk_sidecar::metrics::Metrics;
use bsk_sidecar::runtime::Runtime;
use bsk_sidecar::secret::Secret;

struct Counting;

/// The allocator the sidecar itself uses (src/allocator.rs).
static INNER: bsk_sidecar::allocator::Chosen = bsk_sidecar::allocator::CHOSEN;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations by size: index n counts sizes of n significant bits (up to 2^n - 1 bytes),
/// the last one everything larger.
const CLASSES: usize = 24;
static BY_SIZE: [AtomicU64; CLASSES] = [const { AtomicU64::new(0) }; CLASSES];

fn count(size: usize) {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    let class = (usize::BITS - size.leading_zeros()) as usize;
    if let Some(c) = BY_SIZE.get(class.min(CLASSES - 1)) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn by_size() -> [u64; CLASSES] {
    std::array::from_fn(|i| BY_SIZE.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        INNER.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        INNER.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        INNER.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: usize = 2_000;

/// Reads one HTTP/1.1 message (head, then `Content-Length` bytes) into `buf`; false on EOF.
fn read_message(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut have = 0;
    loop {
        let n = s.read(buf.get_mut(have..).unwrap_or_default())?;
        if n == 0 {
            return Ok(false);
        }
        have += n;
        let got = buf.get(..have).unwrap_or_default();
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = got.get(..end).unwrap_or_default();
            let len = head
                .split(|&b| b == b'\n')
                .find_map(|l| {
                    let l = std::str::from_utf8(l).ok()?;
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while have < end + 4 + len {
                let n = s.read(buf.get_mut(have..).unwrap_or_default())?;
                if n == 0 {
                    return Ok(false);
                }
                have += n;
            }
            return Ok(true);
        }
    }
}

fn upstream() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 1 << 16];
                let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{\"statusCode\":200}";
                while let Ok(true) = read_message(&mut s, &mut buf) {
                    if s.write_all(answer).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let requests: usize = std::env::args().nth(1).map_or(Ok(20_000), |s| s.parse())?;
    let up = upstream()?;
    let dir = std::env::temp_dir().join(format!("bsk-allocs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"admin: {{ listen: "off" }}
state: {{ dir: {state} }}
limits:
  per_ip_rate: {{ per_second: 10000000, burst: 10000000 }}
  max_replay_entries: 1000000
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: {{ secret: "bench-jwt-secret-0123456789abcdef" }}
    aes:
      keys:
        - {{ key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }}
    allow: [127.0.0.0/8]
    rate: {{ per_second: 10000000, burst: 10000000 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt, aes]
        upstream: http://127.0.0.1:{up}/bsk/status
"#,
            state = dir.join("state").display()
        ),
    )?;
    let settings = bsk_sidecar::config::load(&cfg).map_err(|e| format!("{e:?}"))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rt = Runtime::new(settings, Metrics::new())?;
    let future = bsk_sidecar::pipeline::handle(
        &rt,
        0,
        std::net::Ipv4Addr::LOCALHOST.into(),
        http::Request::new(http_body_util::Full::new(bytes::Bytes::new())).into(),
    );
    let future_bytes = std::mem::size_of_val(&future);
    drop(future);
    let bound = tokio.block_on(bsk_sidecar::server::bind(&rt))?;
    let addr = bound.addr_of(&rt, "public").ok_or("no listener")?;
    tokio.spawn(bsk_sidecar::server::serve(
        rt,
        bound,
        std::future::pending(),
    ));

    // Every request its own fresh token, sealed before counting starts.
    let keys = PeerKeys {
        agid: "BSK".to_owned(),
        passcode: Some(Secret::new("376423")),
        jwt: Some(JwtKey::new(Secret::new(
            "bench-jwt-secret-0123456789abcdef",
        ))),
        aes: vec![AesKey::new(
            b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W",
            b"V0ZMZO6WZ45KY2PL",
        )?],
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut wire = Vec::with_capacity(WARMUP + requests);
    for n in 0..WARMUP + requests {
        let plain = format!(
            r#"{{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","applicationNo":"{n}"}}"#
        );
        let body = envelope::seal_timed(
            &[Layer::Token, Layer::Jwt, Layer::Aes],
            &keys,
            plain.as_bytes(),
            BodyShape::Json,
            Some((now, now + 300)),
        )
        .map_err(|e| e.to_string())?
        .body;
        let mut req = format!(
            "POST /bsk/status HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        wire.push(req);
    }

    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut counted = (0, 0);
    let mut sizes_before = [0; CLASSES];
    for (i, req) in wire.iter().enumerate() {
        if i == WARMUP {
            counted = (
                ALLOCS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
            sizes_before = by_size();
        }
        s.write_all(req)?;
        if !read_message(&mut s, &mut buf)? {
            return Err("sidecar closed the connection".into());
        }
        if !buf.starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "request {i} refused: {}",
                String::from_utf8_lossy(buf.get(..200).unwrap_or_default())
            )
            .into());
        }
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - counted.0;
    let bytes = BYTES.load(Ordering::Relaxed) - counted.1;
    println!(
        "{requests} requests: {:.1} allocations and {:.0} bytes allocated per request; \
         the pipeline's future is {future_bytes} bytes",
        allocs as f64 / requests as f64,
        bytes as f64 / requests as f64
    );
    println!("by size, per request:");
    for (class, (after, before)) in by_size().iter().zip(sizes_before).enumerate() {
        let per_request = (after - before) as f64 / requests as f64;
        if per_request >= 0.05 {
            let low = if class == 0 { 0 } else { 1u64 << (class - 1) };
            let high = if class == CLASSES - 1 {
                "more".to_owned()
            } else {
                ((1u64 << class) - 1).to_string()
            };
            println!("  {low:>7}..{high:<7} bytes: {per_request:5.1}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
