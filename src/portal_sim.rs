//! `bsk-sidecar portal-sim`: a stand-in BSK portal for a department to develop against.
//! It serves the portal's side of API-2 (push) and API-6 (operator authentication):
//! opens what arrives with the peer's layers, checks it against the API's table, answers
//! as the spec does (sealed in the same layers), prints each call and keeps it in memory
//! for `GET /received`. [`call`] drives the department's side: the spec's example request
//! for API-1, -3, -4, -5 or -7, sealed, with the answer opened and held against the spec's
//! response table.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::calendar::unix_ms_to_ticket;
use crate::clock::Clock;
use crate::envelope::aes::AesKey;
use crate::envelope::jwt::JwtKey;
use crate::envelope::{self, BodyShape, Incoming, Layer, PeerKeys, Stack};
use crate::guard::schema;
use crate::probe::client::{Client, ClientError, Outgoing, Target};
use crate::probe::craft::{self, AesFault, PasscodeFault, Recipe, TokenFault};
use crate::probe::samples::Sample;
use crate::probe::{describe, open_answer};
use crate::secret::Secret;

/// Where the simulator listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8490";
/// The embedded test keys: for development against the simulator only.
pub const TEST_AGID: &str = "BSK";
pub const TEST_PASSCODE: &str = "376423";
pub const TEST_JWT_SECRET: &str = "portal-sim-jwt-secret-not-for-production";
pub const TEST_AES_KEY: &str = crate::demo::DEMO_KEY;
pub const TEST_AES_IV: &str = crate::demo::DEMO_IV;
/// The embedded default stack: section 11's passcode + JWT.
pub const DEFAULT_LAYERS: [Layer; 2] = [Layer::Token, Layer::Jwt];

/// Requests kept for `GET /received` (the oldest are dropped beyond this).
const MAX_KEPT: usize = 1000;
/// Largest request body read.
const MAX_BODY: usize = 1 << 20;

/// The embedded test keys.
pub fn test_keys() -> Result<PeerKeys, SimError> {
    Ok(PeerKeys {
        agid: TEST_AGID.into(),
        passcode: Some(Secret::new(TEST_PASSCODE.as_bytes().to_vec())),
        jwt: Some(JwtKey::new(Secret::new(
            TEST_JWT_SECRET.as_bytes().to_vec(),
        ))),
        aes: vec![
            AesKey::new(TEST_AES_KEY.as_bytes(), TEST_AES_IV.as_bytes()).map_err(SimError::Keys)?
        ],
    })
}

/// Why the simulator could not start or a call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("keys: {0}")]
    Keys(String),
    #[error("layers: {0}")]
    Layers(String),
    #[error("{0}")]
    Craft(#[from] craft::CraftError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--api {0}: portal-sim calls api1, api3, api4, api5 (api5a), api5b or api7")]
    NotACall(&'static str),
}

/// The portal's APIs the simulator answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    Api2,
    Api6,
}

impl Served {
    fn of(path: &str) -> Option<Served> {
        match path.trim_end_matches('/') {
            "/push" | "/api2" => Some(Served::Api2),
            "/deo/auth" | "/api6" => Some(Served::Api6),
            _ => None,
        }
    }

    fn api(self) -> schema::Api {
        match self {
            Served::Api2 => schema::Api::Api2,
            Served::Api6 => schema::Api::Api6,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Served::Api2 => "API-2",
            Served::Api6 => "API-6",
        }
    }

    /// The spec's answer to an accepted request.
    fn answer(self, payload: &Value) -> Value {
        match self {
            Served::Api2 => json!({
                "appNo": payload.get("appNo").cloned().unwrap_or(Value::Null),
                "responseStatus": "Success",
                "statusCode": 200,
            }),
            Served::Api6 => json!({
                "userId": payload.get("userId").or_else(|| payload.get("userid")).cloned().unwrap_or(Value::Null),
                "userName": "Charan Das",
                "userEmail": "charan.das@gmail.com",
                "bskCode": "B/L/384",
                "bskName": "BDO Office Balagarh",
                "gp": "Guptipara",
                "block": "Balagarh",
                "subdivision": "Chandannagar",
                "district": "Hooghly",
                "userStatus": 1,
                "userType": "DEO",
                "statusCode": 200,
            }),
        }
    }
}

struct Sim {
    layers: Stack,
    keys: PeerKeys,
    received: Mutex<VecDeque<Value>>,
    seq: Mutex<u64>,
    /// Stamps what is recorded and sealed, judges what arrives.
    clock: Clock,
}

fn json_response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn plain_json(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    json_response(status, "application/json", v.to_string().into_bytes())
}

/// `payload` with a `passcode` field (the `passcode` layer carries it inside the
/// plaintext) shown as `***`: the console and `/received` never hold the secret.
fn masked(mut payload: Value) -> Value {
    if let Some(p) = payload.get_mut("passcode") {
        *p = json!("***");
    }
    payload
}

/// `key=value` for each field of an object (strings bare, long values cut).
fn fields(v: &Value) -> String {
    match v.as_object() {
        Some(o) => o
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let cut: String = s.chars().take(60).collect();
                format!("{k}={cut}")
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => v.to_string().chars().take(120).collect(),
    }
}

impl Sim {
    fn record(&self, mut entry: Value) {
        let seq = {
            let mut s = self.seq.lock().unwrap_or_else(|e| e.into_inner());
            *s += 1;
            *s
        };
        if let Some(o) = entry.as_object_mut() {
            o.insert("seq".into(), json!(seq));
            o.insert("at".into(), json!(self.clock.unix_secs()));
        }
        let mut all = self.received.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= MAX_KEPT {
            all.pop_front();
        }
        all.push_back(entry);
    }

    /// Seals the answer in the peer's layers, as the portal answers; plain JSON if it
    /// cannot be sealed.
    fn sealed(&self, status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
        let now = self.clock.unix_secs();
        let body = v.to_string();
        // A bearer token cannot travel back in a header: answer `{"token":…}` (as the
        // sidecar does).
        let (stack, wrap_token) = if self.layers.first() == Some(&Layer::Bearer) {
            (self.layers.get(1..).unwrap_or_default(), true)
        } else {
            (&*self.layers, false)
        };
        let stack = stack.strip_suffix(&[Layer::Passcode]).unwrap_or(stack);
        if stack.is_empty() {
            return plain_json(status, v);
        }
        match envelope::seal_timed(
            stack,
            &self.keys,
            body.as_bytes(),
            BodyShape::Json,
            Some((now, now + 300)),
        ) {
            Ok(s) if wrap_token => plain_json(
                status,
                &json!({ "token": String::from_utf8_lossy(&s.body) }),
            ),
            Ok(s) => json_response(status, s.content_type, s.body),
            Err(_) => plain_json(status, v),
        }
    }

    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        from: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if req.method() == Method::GET && path == "/received" {
            let all: Vec<Value> = self
                .received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            return plain_json(StatusCode::OK, &Value::Array(all));
        }
        let Some(served) = Served::of(&path) else {
            return plain_json(
                StatusCode::NOT_FOUND,
                &json!({"statusCode": 404, "message": "not found: POST /push (API-2), POST /deo/auth (API-6), GET /received"}),
            );
        };
        if req.method() != Method::POST {
            return plain_json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"statusCode": 405, "message": "POST only"}),
            );
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type");
        let authorization = header("authorization");
        let passcode_header = header("x-passcode");
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                println!(
                    "{} {path} from {from}: refused: body over {MAX_BODY} bytes",
                    served.label()
                );
                return plain_json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &json!({"statusCode": 413, "message": "body too large"}),
                );
            }
        };
        let incoming = Incoming {
            content_type: content_type.as_deref(),
            authorization: authorization.as_deref(),
            passcode_header: passcode_header.as_deref(),
            body: &body,
        };
        let opened =
            match envelope::open(&self.layers, &self.keys, &incoming, self.clock.unix_secs()) {
                Ok(o) => o,
                Err(e) => return self.refused(served, &path, from, &e),
            };
        self.judge(served, &path, from, &opened.plain)
    }

    /// A request that did not open: printed and recorded with its reason (a development
    /// tool tells the department exactly what was wrong), answered 400 or 401.
    fn refused(
        &self,
        served: Served,
        path: &str,
        from: SocketAddr,
        e: &envelope::Failure,
    ) -> Response<Full<Bytes>> {
        println!(
            "{} {path} from {from}: refused: {} ({e})",
            served.label(),
            e.reason()
        );
        self.record(json!({
            "api": served.api().name(), "path": path, "verdict": "refused",
            "reason": e.reason(), "payload": Value::Null, "problems": [],
        }));
        let status = match e {
            envelope::Failure::Undecryptable(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        plain_json(
            status,
            &json!({"statusCode": status.as_u16(), "message": "could not open the request", "reason": e.reason()}),
        )
    }

    /// An opened request checked against its API's table: logged, recorded, answered
    /// sealed (the spec's answer, or 400 naming the failing fields).
    fn judge(
        &self,
        served: Served,
        path: &str,
        from: SocketAddr,
        plain: &[u8],
    ) -> Response<Full<Bytes>> {
        let payload = masked(serde_json::from_slice(plain).unwrap_or(Value::Null));
        let problems = schema::check(served.api(), plain).err().unwrap_or_default();
        let listed: Vec<Value> = problems
            .iter()
            .map(|p| json!({"field": p.field, "problem": p.what}))
            .collect();
        println!(
            "{} {path} from {from}: {}",
            served.label(),
            fields(&payload)
        );
        if problems.is_empty() {
            println!(
                "  verdict: accepted (opened with [{}], matches the {} table)",
                self.layers
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(","),
                served.label()
            );
        } else {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            println!("  verdict: refused: {}", text.join("; "));
        }
        self.record(json!({
            "api": served.api().name(), "path": path,
            "verdict": if problems.is_empty() { "accepted" } else { "refused" },
            "reason": if problems.is_empty() { Value::Null } else { json!("schema_violation") },
            "payload": payload, "problems": listed,
        }));
        if !problems.is_empty() {
            let answer = match served {
                Served::Api2 => json!({
                    "appNo": payload.get("appNo").cloned().unwrap_or(Value::Null),
                    "responseStatus": "Failure", "statusCode": 400, "problems": listed,
                }),
                Served::Api6 => {
                    json!({"statusCode": 400, "message": "Bad Request", "problems": listed})
                }
            };
            return self.sealed(StatusCode::BAD_REQUEST, &answer);
        }
        self.sealed(StatusCode::OK, &served.answer(&payload))
    }
}

/// A running simulator.
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Serves until the process ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds `listen` and serves the portal's side for `layers` and `keys`.
pub async fn start(
    listen: &str,
    layers: Vec<Layer>,
    keys: PeerKeys,
    clock: Clock,
) -> Result<Running, SimError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: listen.to_string(),
        source,
    })?;
    let layers = Stack::new(&layers).map_err(|problems| SimError::Layers(problems.join("; ")))?;
    let sim = Arc::new(Sim {
        layers,
        keys,
        received: Mutex::new(VecDeque::new()),
        seq: Mutex::new(0),
        clock,
    });
    let task = tokio::spawn(async move {
        while let Ok((stream, from)) = listener.accept().await {
            let sim = sim.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let sim = sim.clone();
                    async move { Ok::<_, Infallible>(sim.handle(req, from).await) }
                });
                let _ = http1::Builder::new()
                    .header_read_timeout(Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Running { addr, task })
}

/// What [`call`] found.
pub struct CallOutcome {
    /// Printable account of the exchange (never a key).
    pub text: String,
    /// A 2xx answer that matches the response table.
    pub matches: bool,
}

/// Sends the spec's example request for `sample` to `url`, sealed in `layers`, and
/// holds the opened answer against the spec's response table.
pub async fn call(
    url: &str,
    sample: Sample,
    layers: &[Layer],
    keys: &PeerKeys,
    shape: BodyShape,
    timeout: Duration,
    clock: &Clock,
) -> Result<CallOutcome, SimError> {
    if matches!(sample, Sample::Api2 | Sample::Api6) {
        return Err(SimError::NotACall(sample.name()));
    }
    let target = Target::parse(url)?;
    let tls = if target.https {
        Some(crate::probe::client::tls_config(None)?)
    } else {
        None
    };
    let mut client = Client::new(target, tls, crate::probe::client::MAX_RATE, timeout)?;
    let (plain_sent, out) = sealed_request(sample, layers, keys, shape, clock)?;
    let stack = layers
        .iter()
        .map(|l| l.name())
        .collect::<Vec<_>>()
        .join(",");
    let mut text = format!(
        "POST {url} ({}, [{stack}])\n  sent       {}\n",
        sample.name(),
        plain_sent
    );
    let answer = client.post(&out).await?;
    let opened = open_answer(
        layers,
        keys,
        answer.header("content-type"),
        &answer.body,
        clock,
    );
    let (how, plain) = match &opened {
        Some(p) => ("opened", p.clone()),
        None => ("in clear", answer.body.to_vec()),
    };
    let ok_status = (200..300).contains(&answer.status);
    if !ok_status {
        text.push_str(&format!("  came back  {}\n", describe(&answer)));
        text.push_str("  response table: not checked (not a 2xx answer)\n");
        return Ok(CallOutcome {
            text,
            matches: false,
        });
    }
    text.push_str(&format!(
        "  came back  {} ({how}): {}\n",
        answer.status,
        String::from_utf8_lossy(&plain)
    ));
    let (verdict, matches) = response_table(sample, &plain);
    text.push_str(&verdict);
    Ok(CallOutcome { text, matches })
}

/// The sample's request with a ticket and token times from `clock`, sealed in `layers`:
/// the plain JSON sent, and the request that carries it.
fn sealed_request(
    sample: Sample,
    layers: &[Layer],
    keys: &PeerKeys,
    shape: BodyShape,
    clock: &Clock,
) -> Result<(String, Outgoing), SimError> {
    let now_ms = clock.unix_ms_i64();
    let mut id = [0u8; 6];
    let _ = getrandom::getrandom(&mut id);
    let recipe = Recipe {
        plain: sample.request(&unix_ms_to_ticket(now_ms)),
        aes: AesFault::None,
        token: TokenFault::None,
        passcode: PasscodeFault::None,
        jti: format!(
            "portal-sim-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        now: clock.unix_secs(),
    };
    let built = craft::build(layers, keys, &recipe, shape)?;
    let mut headers = Vec::new();
    if let Some(p) = built.passcode_header {
        headers.push(("x-passcode", p));
    }
    let out = Outgoing {
        content_type: built.content_type.to_string(),
        authorization: built.authorization,
        headers,
        body: built.body,
    };
    Ok((recipe.plain, out))
}

/// The `response table:` line for an opened 2xx answer, and whether it matches the
/// sample's response table.
fn response_table(sample: Sample, plain: &[u8]) -> (String, bool) {
    match serde_json::from_slice::<Value>(plain) {
        Err(_) => ("  response table: the answer is not JSON\n".into(), false),
        Ok(v) => match sample.missing_response_fields(&v) {
            Err(shape) => (
                format!("  response table: does not match: {shape}\n"),
                false,
            ),
            Ok(missing) if missing.is_empty() => (
                format!(
                    "  response table: matches the {} response table\n",
                    sample.name()
                ),
                true,
            ),
            Ok(missing) => (
                format!(
                    "  response table: does not match the {} response table: missing {}\n",
                    sample.name(),
                    missing.join(", ")
                ),
                false,
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passcode_inside_the_payload_is_never_shown() {
        let p = masked(json!({"passcode": "376423", "fromDate": "2022-12-10"}));
        assert_eq!(p, json!({"passcode": "***", "fromDate": "2022-12-10"}));
        assert!(!fields(&p).contains("376423"));
    }

    #[test]
    fn served_paths_and_answers_follow_the_spec() {
        assert_eq!(Served::of("/push"), Some(Served::Api2));
        assert_eq!(Served::of("/deo/auth/"), Some(Served::Api6));
        assert_eq!(Served::of("/received"), None);
        let a = Served::Api2.answer(&json!({"appNo": "A1"}));
        assert_eq!(
            a,
            json!({"appNo": "A1", "responseStatus": "Success", "statusCode": 200})
        );
        let a = Served::Api6.answer(&json!({"userId": 9054233544u64}));
        assert_eq!(a["userId"], 9054233544u64);
        assert_eq!(a["userType"], "DEO");
    }
}
