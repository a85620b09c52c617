//! `bsk-sidecar probe`: checks whether a counterparty's endpoint follows the spec and
//! refuses what it must — tampered ciphertexts answered identically (no padding oracle),
//! forged and stale tokens, wrong passcodes, replays, oversized and deeply nested bodies —
//! with a bounded series of requests (at most [`client::MAX_REQUESTS`], at most
//! [`client::MAX_RATE`] per second). Probe only endpoints you are authorised to test.
//!
//! Each check yields one [`Check`]: a verdict, what was sent and what came back, never a
//! key, secret or passcode.

pub mod client;
pub mod craft;
pub mod samples;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::Serialize;

use crate::calendar::{days_until, unix_ms_to_ticket};
use crate::clock::Clock;
use crate::envelope::{self, BodyShape, Incoming, Layer, PeerKeys, Stack};
use client::{Answer, Client, ClientError, Outgoing, Target};
use craft::{AesFault, PasscodeFault, Recipe, TokenFault};
use samples::Sample;

/// How many times each envelope failure kind is sent (for the timing check).
const ROUNDS: usize = 7;
/// Two failure kinds whose answer times are apart by more than this, every answer of
/// one slower than every answer of the other, can be told apart by time.
const TIMING_GAP: Duration = Duration::from_millis(1);
/// Age of the "stale" ticket: beyond the 24-hour window of API-2 routes.
const STALE_SECS: u64 = 26 * 3600;
/// Size of the filler in the oversized request.
const BIG_BODY: usize = 2 << 20;
/// Nesting depth of the deep JSON request.
const DEEP: usize = 5000;
/// A certificate expiring sooner than this is a WARN.
const EXPIRY_WARN_DAYS: i64 = 14;

/// What to probe and with which keys.
pub struct Options {
    pub url: String,
    pub layers: Vec<Layer>,
    pub keys: PeerKeys,
    pub sample: Sample,
    pub shape: BodyShape,
    /// Requests per second, at most [`client::MAX_RATE`].
    pub rate: u32,
    pub timeout: Duration,
    /// Trust these certificates instead of the system's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// Stamps tickets and tokens, ages certificates.
    pub clock: Clock,
}

/// Why a probe could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--rate must be from 1 to {max}", max = client::MAX_RATE)]
    Rate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "WARN")]
    Warn,
    #[serde(rename = "FAIL")]
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub verdict: Verdict,
    pub name: String,
    pub sent: String,
    pub got: String,
}

/// Every check, in the order run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub api: &'static str,
    pub envelope: String,
    pub checks: Vec<Check>,
    pub requests: usize,
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
}

impl Report {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.fail == 0
    }

    /// One line per check, then the summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<4} {}: sent {} -> {}",
                c.verdict.label(),
                c.name,
                c.sent,
                c.got
            );
        }
        let _ = writeln!(
            out,
            "{} checks: {} ok, {} WARN, {} FAIL ({} requests to {}, {} as [{}])",
            self.checks.len(),
            self.ok,
            self.warn,
            self.fail,
            self.requests,
            self.url,
            self.api,
            self.envelope
        );
        out
    }
}

/// Opens an answer the way a peer reads it: with the stack (without `passcode`, which
/// answers never carry), else with the layers inside the framing, else the inner layers
/// on a wrap object's `encData`. `None` when it does not open.
pub fn open_answer(
    layers: &[Layer],
    keys: &PeerKeys,
    content_type: Option<&str>,
    body: &[u8],
    clock: &Clock,
) -> Option<Vec<u8>> {
    let now = clock.unix_secs();
    let layers = layers.strip_suffix(&[Layer::Passcode]).unwrap_or(layers);
    let attempt = |stack: &[Layer], body: &[u8]| {
        let req = Incoming {
            content_type,
            authorization: None,
            passcode_header: None,
            body,
        };
        let stack = Stack::new(stack).ok()?;
        envelope::open(&stack, keys, &req, now)
            .ok()
            .map(|o| o.plain)
    };
    let framed = matches!(
        layers.first(),
        Some(Layer::Form | Layer::Token | Layer::Bearer)
    );
    let inner = if framed {
        layers.get(1..).unwrap_or_default()
    } else {
        layers
    };
    if let Some(p) = attempt(layers, body) {
        return Some(p);
    }
    if inner.is_empty() {
        return None;
    }
    if framed {
        if let Some(p) = attempt(inner, body) {
            return Some(p);
        }
    }
    let wrapped: serde_json::Value = serde_json::from_slice(body).ok()?;
    let enc = wrapped.get("encData")?.as_str()?;
    attempt(inner, enc.as_bytes())
}

/// `400 bad_envelope`: the status and the answer's `reason` (or `message`) when it has one.
pub fn describe(a: &Answer) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(&a.body).ok();
    let label = json.as_ref().and_then(|v| {
        ["reason", "error", "message"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|s| s.as_str()))
            .map(|s| s.chars().take(60).collect::<String>())
    });
    match label {
        Some(l) => format!("{} {l}", a.status),
        None => format!(
            "{} ({} bytes{})",
            a.status,
            a.body.len(),
            a.header("content-type")
                .map(|c| format!(" {c}"))
                .unwrap_or_default()
        ),
    }
}

/// What must be identical in two refusals: status, headers other than date, request id
/// and length, and the body with the request id masked.
fn fingerprint(a: &Answer) -> String {
    let id = a.header("x-request-id").unwrap_or_default();
    let mut headers: Vec<String> = a
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id" | "content-length"))
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    headers.sort();
    let mut body = String::from_utf8_lossy(&a.body).into_owned();
    if !id.is_empty() {
        body = body.replace(id, "<request-id>");
    }
    if let Ok(serde_json::Value::Object(mut o)) = serde_json::from_str::<serde_json::Value>(&body) {
        o.remove("requestId");
        body = serde_json::Value::Object(o).to_string();
    }
    format!("{} | {} | {body}", a.status, headers.join("; "))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// One failure kind's answer times, and their median.
struct KindTimes {
    fault: AesFault,
    median: Duration,
    times: Vec<Duration>,
}

/// The widest gap between two failure kinds: the fastest answer to the slow kind less
/// the slowest answer to the fast kind, over every ordered pair with answers to both.
fn widest_gap(timings: &[KindTimes]) -> Option<(AesFault, AesFault, Duration)> {
    let mut widest = None;
    for slow in timings {
        for fast in timings {
            let (Some(s_min), Some(f_max)) = (slow.times.iter().min(), fast.times.iter().max())
            else {
                continue;
            };
            let gap = s_min.saturating_sub(*f_max);
            if widest.map_or(true, |(_, _, w)| gap > w) {
                widest = Some((slow.fault, fast.fault, gap));
            }
        }
    }
    widest
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Probe {
    client: Client,
    opts: Options,
    checks: Vec<Check>,
    last_ticket_ms: i64,
    run_id: String,
    n: usize,
}

/// Runs every check that applies to the stack and returns the report.
pub async fn run(opts: Options) -> Result<Report, ProbeError> {
    if opts.rate == 0 || opts.rate > client::MAX_RATE {
        return Err(ProbeError::Rate);
    }
    let target = Target::parse(&opts.url)?;
    let tls = if target.https {
        Some(client::tls_config(opts.ca.as_deref())?)
    } else {
        None
    };
    let client = Client::new(target, tls, opts.rate, opts.timeout)?;
    let mut id = [0u8; 6];
    let _ = getrandom::getrandom(&mut id);
    let run_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut p = Probe {
        client,
        opts,
        checks: Vec::new(),
        last_ticket_ms: 0,
        run_id,
        n: 0,
    };
    p.transport().await;
    p.accepted().await;
    let layers = p.opts.layers.clone();
    if layers.contains(&Layer::Aes) {
        p.envelope_faults().await;
    }
    let carries_passcode = layers.contains(&Layer::Token)
        || layers.contains(&Layer::Passcode)
        || (layers.contains(&Layer::Bearer) && p.opts.keys.passcode.is_some());
    if carries_passcode {
        p.passcodes().await;
    }
    if layers.contains(&Layer::Jwt) {
        p.tokens().await;
    }
    p.replay().await;
    p.stale().await;
    p.oversized().await;
    p.deep().await;
    let count = |v| p.checks.iter().filter(|c| c.verdict == v).count();
    let (ok, warn, fail) = (
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
    );
    Ok(Report {
        url: p.opts.url.clone(),
        api: p.opts.sample.name(),
        envelope: layers
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(","),
        requests: p.client.sent(),
        checks: p.checks,
        ok,
        warn,
        fail,
    })
}

impl Probe {
    fn check(&mut self, verdict: Verdict, name: &str, sent: String, got: String) {
        self.checks.push(Check {
            verdict,
            name: name.to_string(),
            sent,
            got,
        });
    }

    /// A `ticketNo` for now, distinct from every one this probe sent before.
    fn fresh_ticket(&mut self) -> String {
        let ms = self.opts.clock.unix_ms_i64().max(self.last_ticket_ms + 1);
        self.last_ticket_ms = ms;
        unix_ms_to_ticket(ms)
    }

    fn recipe(&mut self) -> Recipe {
        let ticket = self.fresh_ticket();
        self.n += 1;
        Recipe {
            plain: self.opts.sample.request(&ticket),
            aes: AesFault::None,
            token: TokenFault::None,
            passcode: PasscodeFault::None,
            jti: format!("probe-{}-{}", self.run_id, self.n),
            now: self.opts.clock.unix_secs(),
        }
    }

    fn outgoing(&self, r: &Recipe) -> Result<Outgoing, String> {
        let b = craft::build(&self.opts.layers, &self.opts.keys, r, self.opts.shape)
            .map_err(|e| e.to_string())?;
        let mut headers = Vec::new();
        if let Some(p) = b.passcode_header {
            headers.push(("x-passcode", p));
        }
        Ok(Outgoing {
            content_type: b.content_type.to_string(),
            authorization: b.authorization,
            headers,
            body: b.body,
        })
    }

    async fn send(&mut self, r: &Recipe) -> Result<Answer, String> {
        let out = self.outgoing(r)?;
        self.client.post(&out).await.map_err(|e| e.to_string())
    }

    /// A request that must be refused: 4xx is ok; 2xx/3xx accepted it; 5xx is a failure
    /// to refuse cleanly; no answer is a WARN.
    fn refusal(&mut self, name: &str, sent: String, got: Result<Answer, String>) {
        match got {
            Ok(a) if (400..500).contains(&a.status) => {
                self.check(Verdict::Ok, name, sent, format!("refused {}", describe(&a)))
            }
            Ok(a) if a.status >= 500 => self.check(
                Verdict::Fail,
                name,
                sent,
                format!("{} (a server error, not a refusal)", describe(&a)),
            ),
            Ok(a) => self.check(
                Verdict::Fail,
                name,
                sent,
                format!("ACCEPTED: {}", describe(&a)),
            ),
            Err(e) => self.check(Verdict::Warn, name, sent, format!("no answer: {e}")),
        }
    }

    async fn transport(&mut self) {
        if !self.client.target().https {
            self.check(
                Verdict::Warn,
                "transport",
                "plain http://".into(),
                "no TLS: only the envelope layers protect what travels".into(),
            );
            return;
        }
        match self.client.inspect_tls().await {
            Err(e) => self.check(
                Verdict::Fail,
                "transport",
                "a TLS handshake".into(),
                e.to_string(),
            ),
            Ok(t) => {
                let days = t
                    .not_after
                    .map(|na| days_until(self.opts.clock.unix_secs_i64(), na));
                let verdict = match days {
                    Some(d) if d < 0 => Verdict::Fail,
                    Some(d) if d < EXPIRY_WARN_DAYS => Verdict::Warn,
                    Some(_) => Verdict::Ok,
                    None => Verdict::Warn,
                };
                let expiry = days
                    .map(|d| format!("leaf certificate expires in {d} days"))
                    .unwrap_or_else(|| "leaf certificate expiry unreadable".into());
                self.check(
                    verdict,
                    "transport",
                    "a TLS handshake".into(),
                    format!(
                        "{}, chain of {} certificate(s) verified, {expiry}",
                        t.version, t.chain_len
                    ),
                );
            }
        }
    }

    async fn accepted(&mut self) {
        let r = self.recipe();
        let sent = format!(
            "the {} example, correctly sealed (fresh ticketNo/iat)",
            self.opts.sample.name()
        );
        match self.send(&r).await {
            Ok(a) if (200..300).contains(&a.status) => {
                let opened = open_answer(
                    &self.opts.layers,
                    &self.opts.keys,
                    a.header("content-type"),
                    &a.body,
                    &self.opts.clock,
                );
                let what = match opened {
                    Some(p) => format!("answer opened: {} bytes of JSON", p.len()),
                    None if serde_json::from_slice::<serde::de::IgnoredAny>(&a.body).is_ok() => {
                        format!("answer in clear JSON ({} bytes)", a.body.len())
                    }
                    None => format!(
                        "answer of {} bytes{}",
                        a.body.len(),
                        a.header("content-type")
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default()
                    ),
                };
                self.check(
                    Verdict::Ok,
                    "sealed request accepted",
                    sent,
                    format!("{}, {what}", a.status),
                );
            }
            Ok(a) => self.check(
                Verdict::Fail,
                "sealed request accepted",
                sent,
                format!("refused {}", describe(&a)),
            ),
            Err(e) => self.check(Verdict::Fail, "sealed request accepted", sent, e),
        }
    }

    async fn envelope_faults(&mut self) {
        let mut answers: BTreeMap<usize, Vec<Result<Answer, String>>> = BTreeMap::new();
        // Round-robin, so a drift in the target's speed affects every kind alike.
        for _ in 0..ROUNDS {
            for (i, &fault) in AesFault::ALL.iter().enumerate() {
                let mut r = self.recipe();
                r.aes = fault;
                let got = self.send(&r).await;
                answers.entry(i).or_default().push(got);
            }
        }
        let mut prints: Vec<(AesFault, String, String)> = Vec::new();
        let mut timings: Vec<KindTimes> = Vec::new();
        for (i, &fault) in AesFault::ALL.iter().enumerate() {
            let got = answers.remove(&i).unwrap_or_default();
            let sent = format!("{} x{ROUNDS}", fault.label());
            let mut times: Vec<Duration> = got.iter().flatten().map(|a| a.elapsed).collect();
            let med = median(&mut times);
            timings.push(KindTimes {
                fault,
                median: med,
                times,
            });
            for a in got.iter().flatten() {
                prints.push((fault, fingerprint(a), describe(a)));
            }
            // One line per kind: the worst of its answers.
            let worst = got
                .iter()
                .find(|g| matches!(g, Ok(a) if !(400..500).contains(&a.status)))
                .or_else(|| got.iter().find(|g| g.is_err()))
                .or_else(|| got.first())
                .cloned()
                .unwrap_or_else(|| Err("not sent".into()));
            self.refusal(
                &format!("refused: {}", fault.label()),
                format!("{sent}, median {}", ms(med)),
                worst,
            );
        }
        self.padding_oracle(&prints);
        self.timing(&timings);
    }

    /// Every envelope failure must get the same answer: a difference is an oracle.
    fn padding_oracle(&mut self, prints: &[(AesFault, String, String)]) {
        let distinct: BTreeMap<&str, Vec<(AesFault, &str)>> =
            prints.iter().fold(BTreeMap::new(), |mut m, (f, fp, d)| {
                m.entry(fp.as_str()).or_default().push((*f, d.as_str()));
                m
            });
        let sent = format!(
            "{} envelope failures ({} kinds)",
            prints.len(),
            AesFault::ALL.len()
        );
        if distinct.len() <= 1 {
            self.check(
                Verdict::Ok,
                "padding oracle",
                sent,
                "every answer identical (status, headers, body)".into(),
            );
        } else {
            let mut groups: Vec<String> = distinct
                .values()
                .map(|kinds| {
                    let mut names: Vec<&str> = kinds.iter().map(|(f, _)| f.label()).collect();
                    names.dedup();
                    let d = kinds.first().map(|(_, d)| *d).unwrap_or_default();
                    format!("{} -> {d}", names.join(" + "))
                })
                .collect();
            groups.sort();
            self.check(
                Verdict::Fail,
                "padding oracle",
                sent,
                format!(
                    "{} different answers: {}",
                    distinct.len(),
                    groups.join("; ")
                ),
            );
        }
    }

    /// Failure kinds told apart by time: a warning. Two kinds are told apart when every
    /// answer to one came more than [`TIMING_GAP`] later than every answer to the other;
    /// a difference of medians alone is not enough, for a loaded machine's noise moves
    /// a median of a few samples by milliseconds.
    fn timing(&mut self, timings: &[KindTimes]) {
        let listing = timings
            .iter()
            .map(|k| format!("{} {}", k.fault.label(), ms(k.median)))
            .collect::<Vec<_>>()
            .join(", ");
        let sent = format!("median time per failure kind: {listing}");
        match widest_gap(timings) {
            Some((slow, fast, gap)) if gap > TIMING_GAP => self.check(
                Verdict::Warn,
                "timing",
                sent,
                format!(
                    "every {} answer came at least {} later than every {} answer: \
                     the kinds may be told apart by time",
                    slow.label(),
                    ms(gap),
                    fast.label()
                ),
            ),
            _ => self.check(
                Verdict::Ok,
                "timing",
                sent,
                format!(
                    "no two kinds apart by more than {} in every answer",
                    ms(TIMING_GAP)
                ),
            ),
        }
    }

    async fn passcodes(&mut self) {
        for (fault, name, sent) in [
            (PasscodeFault::Wrong, "passcode: wrong", "a wrong passcode"),
            (PasscodeFault::Missing, "passcode: missing", "no passcode"),
            (
                PasscodeFault::Numeric,
                "passcode: numeric",
                "passcode as the JSON number 0",
            ),
        ] {
            let mut r = self.recipe();
            r.passcode = fault;
            let got = self.send(&r).await;
            self.refusal(name, sent.into(), got);
        }
    }

    async fn tokens(&mut self) {
        let cases: [(TokenFault, &str); 9] = [
            (TokenFault::AlgNone("none"), "alg \"none\", no signature"),
            (TokenFault::AlgNone("None"), "alg \"None\", no signature"),
            (TokenFault::AlgNone("NONE"), "alg \"NONE\", no signature"),
            (TokenFault::AlgNone("nOnE"), "alg \"nOnE\", no signature"),
            (TokenFault::Hs512, "HS512 header and signature"),
            (TokenFault::Rs256Header, "RS256 header, HMAC signature"),
            (TokenFault::WrongSecret, "HS256 with a wrong secret"),
            (TokenFault::Expired, "exp an hour ago"),
            (TokenFault::NoExp, "iat now and no exp"),
        ];
        for (fault, sent) in cases {
            let name = match &fault {
                TokenFault::AlgNone(s) => format!("jwt: alg {s}"),
                TokenFault::Hs512 => "jwt: HS512".into(),
                TokenFault::Rs256Header => "jwt: RS256 header".into(),
                TokenFault::WrongSecret => "jwt: wrong secret".into(),
                TokenFault::Expired => "jwt: expired".into(),
                _ => "jwt: no exp".into(),
            };
            let mut r = self.recipe();
            r.token = fault;
            let got = self.send(&r).await;
            self.refusal(&name, sent.into(), got);
        }
    }

    async fn replay(&mut self) {
        let r = self.recipe();
        let sent = "one correctly sealed request twice".to_string();
        let first = self.send(&r).await;
        match first {
            Ok(a) if (200..300).contains(&a.status) => {
                let second = self.send(&r).await;
                self.refusal("replay", sent, second);
            }
            Ok(a) => self.check(
                Verdict::Warn,
                "replay",
                sent,
                format!("first copy refused ({}): cannot judge", describe(&a)),
            ),
            Err(e) => self.check(Verdict::Warn, "replay", sent, format!("no answer: {e}")),
        }
    }

    async fn stale(&mut self) {
        let has_jwt = self.opts.layers.contains(&Layer::Jwt);
        if !self.opts.sample.has_ticket() && !has_jwt {
            self.check(
                Verdict::Warn,
                "stale",
                "nothing".into(),
                format!(
                    "the {} example has no ticketNo and the stack no JWT: no timestamp to age",
                    self.opts.sample.name()
                ),
            );
            return;
        }
        let mut r = self.recipe();
        let old = unix_ms_to_ticket(self.opts.clock.unix_ms_i64() - (STALE_SECS * 1000) as i64);
        r.plain = self.opts.sample.request(&old);
        let mut sent = Vec::new();
        if self.opts.sample.has_ticket() {
            sent.push("ticketNo");
        }
        if has_jwt {
            r.token = TokenFault::IssuedAgo(STALE_SECS);
            sent.push("iat");
        }
        let got = self.send(&r).await;
        self.refusal(
            "stale",
            format!("{} {} hours old", sent.join(" and "), STALE_SECS / 3600),
            got,
        );
    }

    async fn oversized(&mut self) {
        let mut r = self.recipe();
        let filler = "x".repeat(BIG_BODY);
        r.plain = craft::splice(&r.plain, "filler", &format!("\"{filler}\""));
        let out = match self.outgoing(&r) {
            Ok(o) => o,
            Err(e) => return self.check(Verdict::Fail, "2 MiB body", "nothing".into(), e),
        };
        let sent = format!("a sealed body of {} bytes", out.body.len());
        match self.client.post(&out).await {
            // The target may refuse as soon as it reads Content-Length and close the
            // connection while the body is still being written: that is a refusal too.
            Err(ClientError::Http(e)) => self.check(
                Verdict::Ok,
                "2 MiB body",
                sent,
                format!("connection closed without an answer ({e})"),
            ),
            got => self.refusal("2 MiB body", sent, got.map_err(|e| e.to_string())),
        }
    }

    async fn deep(&mut self) {
        let mut r = self.recipe();
        let deep = format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP));
        r.plain = craft::splice(&r.plain, "deep", &deep);
        let got = self.send(&r).await;
        self.refusal(
            "5,000-deep JSON",
            format!("a sealed payload with an array nested {DEEP} deep"),
            got,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, id: &str, date: &str, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-request-id".into(), id.into()),
                ("date".into(), date.into()),
                ("content-length".into(), body.len().to_string()),
            ],
            body: bytes::Bytes::from(body.to_string()),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn answers_differing_only_in_request_id_and_date_are_identical() {
        let a = answer(
            400,
            "r-1",
            "Mon",
            r#"{"statusCode":400,"reason":"bad_envelope","requestId":"r-1"}"#,
        );
        let b = answer(
            400,
            "r-22",
            "Tue",
            r#"{"statusCode":400,"reason":"bad_envelope","requestId":"r-22"}"#,
        );
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = answer(
            400,
            "r-3",
            "Mon",
            r#"{"statusCode":400,"reason":"bad_padding","requestId":"r-3"}"#,
        );
        assert_ne!(fingerprint(&a), fingerprint(&c));
        let d = answer(
            500,
            "r-1",
            "Mon",
            r#"{"statusCode":400,"reason":"bad_envelope","requestId":"r-1"}"#,
        );
        assert_ne!(fingerprint(&a), fingerprint(&d));
        let mut e = a.clone();
        e.headers.push(("x-error".into(), "padding".into()));
        assert_ne!(fingerprint(&a), fingerprint(&e));
        assert_eq!(describe(&a), "400 bad_envelope");
    }

    #[test]
    fn medians_of_odd_and_empty_sets() {
        let mut v = vec![
            Duration::from_millis(9),
            Duration::from_millis(1),
            Duration::from_millis(5),
        ];
        assert_eq!(median(&mut v), Duration::from_millis(5));
        assert_eq!(median(&mut []), Duration::ZERO);
    }

    fn times(fault: AesFault, ms: &[u64]) -> KindTimes {
        let mut times: Vec<Duration> = ms.iter().map(|&m| Duration::from_millis(m)).collect();
        KindTimes {
            fault,
            median: median(&mut times),
            times,
        }
    }

    #[test]
    fn noisy_kinds_whose_times_overlap_are_not_told_apart() {
        // Medians 3 and 7 ms, 4 ms apart, but one slow answer of the fast kind
        // reaches the slow kind's fastest: noise, no gap.
        let t = [
            times(AesFault::BadPadding, &[2, 3, 3, 8]),
            times(AesFault::WrongKey, &[7, 7, 8, 9]),
        ];
        assert_eq!(widest_gap(&t).map(|(_, _, gap)| gap), Some(Duration::ZERO));
    }

    #[test]
    fn a_kind_slower_in_every_answer_is_named_with_its_gap() {
        let t = [
            times(AesFault::BadPadding, &[2, 3, 3, 4]),
            times(AesFault::WrongKey, &[7, 7, 8, 9]),
            times(AesFault::Truncated, &[]),
        ];
        assert_eq!(
            widest_gap(&t),
            Some((
                AesFault::WrongKey,
                AesFault::BadPadding,
                Duration::from_millis(3)
            ))
        );
    }
}
