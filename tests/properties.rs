//! Property tests: whatever a client sends, the sidecar answers a JSON 4xx and the
//! application sees nothing; and every valid layer stack seals and opens arbitrary JSON
//! back to the same bytes.

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::Full;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use bsk_sidecar::envelope::{self, aes::AesKey, jwt::JwtKey, BodyShape, Incoming, Layer};
use bsk_sidecar::secret::Secret;

use support::*;

// ---------------------------------------------------------------------------------------
// Any request to any route: a JSON 4xx, nothing forwarded.

/// One route per layer stack the spec uses, in front of `{APP}`.
/// Arbitrary bytes almost never open an envelope, so freshness and replay (tested on
/// their own in tests/security.rs and tests/protocol.rs) are off here: the control request
/// is a fixed, old sample.
const CONFIG: &str = r#"
admin: { listen: off }
limits:
  per_ip_rate: { per_second: 100000, burst: 100000 }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /form, from: bsk, fresh: off, envelope: [form, aes], max_body: 4KiB, upstream: "http://{APP}/form" }
      - { path: /token, from: bsk, fresh: off, envelope: [token, jwt], upstream: "http://{APP}/token" }
      - { path: /bearer, from: bsk, fresh: off, envelope: [bearer, jwt], upstream: "http://{APP}/bearer" }
      - { path: /token-aes, from: bsk, fresh: off, envelope: [token, jwt, aes], upstream: "http://{APP}/token-aes" }
      - { path: /form-jwt, from: bsk, fresh: off, envelope: [form, aes, jwt], upstream: "http://{APP}/form-jwt" }
      - { path: /aes, from: bsk, fresh: off, envelope: [aes], upstream: "http://{APP}/aes" }
      - { path: /jwt, from: bsk, fresh: off, envelope: [jwt], upstream: "http://{APP}/jwt" }
      - { path: /api1, from: bsk, fresh: off, envelope: [form, aes], schema: api1, upstream: "http://{APP}/api1" }
"#;

const ROUTES: &[&str] = &[
    "/form",
    "/token",
    "/bearer",
    "/token-aes",
    "/form-jwt",
    "/aes",
    "/jwt",
    "/api1",
];

const ODD_PATHS: &[&str] = &[
    "/",
    "/nope",
    "/form/",
    "/form?agId=BSK",
    "/FORM",
    "//form",
    "/form/../token",
    "/%66orm",
];

/// One request a hostile or broken client might send.
#[derive(Debug, Clone)]
struct Attempt {
    method: Method,
    path: &'static str,
    content_type: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
    passcode: Option<HeaderValue>,
    body: Vec<u8>,
}

fn header_value(candidates: Vec<String>) -> impl Strategy<Value = Option<HeaderValue>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(candidates).prop_map(|s| HeaderValue::from_str(&s).ok()),
        any::<Vec<u8>>().prop_map(|b| HeaderValue::from_bytes(&b).ok()),
        "[ -~]{0,80}".prop_map(|s| HeaderValue::from_str(&s).ok()),
    ]
}

/// Something shaped like a JWT, signed with the right secret or not.
fn jwt_like() -> impl Strategy<Value = String> {
    let key = JwtKey::new(Secret::new(JWT_SECRET));
    prop_oneof![
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,43}",
        // Signed with the peer's secret but without `exp` (the peer requires it).
        json_object(2).prop_filter_map("signable", move |claims| envelope::jwt::sign(
            &key,
            claims.as_bytes()
        )
        .ok()),
        any::<String>(),
    ]
}

/// Ciphertext under the peer's key of something that is not JSON.
fn not_json_ciphertext() -> impl Strategy<Value = String> {
    any::<Vec<u8>>().prop_map(|mut b| {
        b.insert(0, 0);
        let key = AesKey::new(SPEC_KEY.as_bytes(), SPEC_IV.as_bytes()).expect("spec key");
        envelope::aes::encrypt(&key, &b)
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let enc = prop_oneof![
        "[A-Za-z0-9+/=%]{0,120}",
        not_json_ciphertext(),
        any::<String>()
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        enc.clone().prop_map(|e| form_body("BSK", &e)),
        enc.clone()
            .prop_map(|e| format!("agId=BSK&encData={e}&agId=XYZ").into_bytes()),
        enc.clone().prop_map(|e| serde_json::to_vec(
            &serde_json::json!({ "agId": "BSK", "encData": e })
        )
        .expect("json")),
        enc.prop_map(String::into_bytes),
        jwt_like().prop_map(|t| token_body(PASSCODE, &t)),
        jwt_like().prop_map(|t| token_body("000000", &t)),
        jwt_like().prop_map(String::into_bytes),
        json_object(3).prop_map(String::into_bytes),
    ]
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let method = prop_oneof![
        6 => Just(Method::POST),
        1 => proptest::sample::select(vec![
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ]),
    ];
    let path = prop_oneof![
        6 => proptest::sample::select(ROUTES),
        1 => proptest::sample::select(ODD_PATHS),
    ];
    let content_type = header_value(vec![
        "application/x-www-form-urlencoded".into(),
        "application/json".into(),
        "application/json; charset=utf-8".into(),
        "text/plain; charset=utf-8".into(),
        "APPLICATION/X-WWW-FORM-URLENCODED; charset=latin1".into(),
        "multipart/form-data; boundary=x".into(),
        "application/jwt".into(),
    ]);
    let authorization = prop_oneof![
        header_value(vec!["Bearer".into(), "Basic QlNLOjM3NjQyMw==".into()]),
        jwt_like().prop_map(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()),
    ];
    let passcode = header_value(vec![PASSCODE.into(), "".into(), "3764230".into()]);
    (method, path, content_type, authorization, passcode, body()).prop_map(
        |(method, path, content_type, authorization, passcode, body)| Attempt {
            method,
            path,
            content_type,
            authorization,
            passcode,
            body,
        },
    )
}

fn to_request(a: &Attempt, to: std::net::SocketAddr) -> Request<Full<Bytes>> {
    let mut b = request(a.method.clone(), to, a.path);
    if let Some(v) = &a.content_type {
        b = b.header(header::CONTENT_TYPE, v.clone());
    }
    if let Some(v) = &a.authorization {
        b = b.header(header::AUTHORIZATION, v.clone());
    }
    if let Some(v) = &a.passcode {
        b = b.header("x-passcode", v.clone());
    }
    b.body(Full::new(Bytes::from(a.body.clone())))
        .expect("request")
}

/// The answer is a 4xx in the spec's error shape; returns `status reason`, or says what
/// is wrong.
fn check_refusal(answer: &Answer) -> Result<String, String> {
    let status = answer.status.as_u16();
    if !(400..500).contains(&status) {
        return Err(format!("status {status}: {}", answer.text()));
    }
    if answer.header("content-type") != Some("application/json") {
        return Err(format!("content type {:?}", answer.header("content-type")));
    }
    let v: serde_json::Value = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("body is not JSON ({e}): {}", answer.text()))?;
    if v["statusCode"] != status {
        return Err(format!(
            "statusCode {} for status {status}",
            v["statusCode"]
        ));
    }
    let Some(reason) = v["reason"].as_str() else {
        return Err(format!("no reason: {v}"));
    };
    Ok(format!("{status} {reason}"))
}

#[test]
fn any_request_is_refused_with_a_json_4xx_and_never_forwarded() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (app, sc) = rt.block_on(async {
        let app = Upstream::start(Behaviour::Echo).await;
        let sc = Sidecar::start(
            CONFIG,
            &[
                ("{PEER_BSK}", PEER_BSK.to_string()),
                ("{APP}", app.addr.to_string()),
            ],
        )
        .await;
        (app, sc)
    });
    let to = sc.addr;

    // The routes are live: a correctly sealed request goes through (else every refusal
    // below would prove nothing).
    let sealed = seal(
        &[Layer::Form, Layer::Aes],
        &sc.keys("bsk"),
        TICKET_PLAIN.as_bytes(),
        BodyShape::Form,
    );
    let ok = rt.block_on(send(to, sealed_post(to, "/form", &sealed)));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(app.count(), 1);
    app.clear();

    let mut runner = TestRunner::new(Config {
        cases: 1500,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(BTreeMap::<String, usize>::new());
    let outcome = runner.run(&attempt(), |a| {
        let answer = rt
            .block_on(send_from(LOCAL, to, to_request(&a, to)))
            .map_err(|e| TestCaseError::fail(format!("no HTTP answer: {e}")))?;
        let reason = check_refusal(&answer).map_err(TestCaseError::fail)?;
        if let Ok(mut seen) = seen.lock() {
            *seen.entry(reason).or_default() += 1;
        }
        if app.count() != 0 {
            return Err(TestCaseError::fail(format!(
                "the application received {:?}",
                app.recorded()
            )));
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert_eq!(app.count(), 0);
    // The generator reaches every stage, not only the router.
    let seen = seen.into_inner().expect("tally");
    for stage in [
        "404 not_found",
        "405 method_not_allowed",
        "415 unsupported_media_type",
        "400 bad_envelope",
        "401 bad_passcode",
        "401 malformed_token",
        "401 missing_exp",
    ] {
        assert!(seen.contains_key(stage), "no {stage} among {seen:?}");
    }
}

// ---------------------------------------------------------------------------------------
// seal/open round trips.

/// A JSON string literal: serde_json's rendering (non-ASCII as is), or every character
/// escaped as `\uXXXX` (surrogate pairs beyond the BMP).
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).expect("string")),
        "[\\PC]{0,12}".prop_map(|s| serde_json::to_string(&s).expect("string")),
        any::<String>().prop_map(|s| {
            let mut out = String::from("\"");
            for unit in s.encode_utf16() {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            out.push('"');
            out
        }),
    ]
}

/// Numbers as a sender writes them, 17-digit integers (above 2^53) included.
fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        (10_000_000_000_000_000u64..100_000_000_000_000_000u64).prop_map(|n| n.to_string()),
        (10_000_000_000_000_000u64..100_000_000_000_000_000u64).prop_map(|n| format!("-{n}")),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..100_000, 0u32..100).prop_map(|(a, b)| format!("{a}.{b:02}")),
        (1u32..10, 0i32..30).prop_map(|(a, e)| format!("{a}.0e{e}")),
    ]
}

fn space() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n  "])
}

/// Any JSON value, nested up to `depth` levels.
fn json_value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        json_string(),
        json_number(),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            (proptest::collection::vec((inner.clone(), space()), 0..4)).prop_map(|items| {
                let parts: Vec<String> =
                    items.into_iter().map(|(v, s)| format!("{s}{v}")).collect();
                format!("[{}]", parts.join(","))
            }),
            members(inner),
        ]
    })
    .boxed()
}

/// Claim names a JWT library interprets; kept out of generated objects.
const REGISTERED: &[&str] = &["exp", "nbf", "iat", "jti", "aud", "iss", "sub"];

fn members(values: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    let key = prop_oneof![any::<String>(), "[a-zA-Z]{1,10}"]
        .prop_filter("registered claim", |k| !REGISTERED.contains(&k.as_str()));
    (
        proptest::collection::btree_map(key, (values, space()), 0..6),
        space(),
    )
        .prop_map(|(map, end): (BTreeMap<String, (String, &str)>, &str)| {
            let parts: Vec<String> = map
                .into_iter()
                .map(|(k, (v, s))| {
                    format!("{s}{}{s}:{s}{v}", serde_json::to_string(&k).expect("key"))
                })
                .collect();
            format!("{{{}{end}}}", parts.join(","))
        })
}

/// A JSON object as a peer would send it.
fn json_object(depth: u32) -> impl Strategy<Value = String> {
    members(json_value(depth))
}

fn round_trip_keys() -> envelope::PeerKeys {
    let mut jwt = JwtKey::new(Secret::new(JWT_SECRET));
    jwt.require_exp = false;
    envelope::PeerKeys {
        agid: "BSK".to_owned(),
        passcode: Some(Secret::new(PASSCODE)),
        jwt: Some(jwt),
        aes: vec![AesKey::new(SPEC_KEY.as_bytes(), SPEC_IV.as_bytes()).expect("spec key")],
    }
}

/// Every stack of one to three layers that `validate_stack` accepts for these keys.
fn valid_stacks(keys: &envelope::PeerKeys) -> Vec<Vec<Layer>> {
    let mut stacks: Vec<Vec<Layer>> = Layer::ALL.iter().map(|&l| vec![l]).collect();
    for _ in 0..2 {
        let longer: Vec<Vec<Layer>> = stacks
            .iter()
            .filter(|s| s.len() == stacks.last().map_or(0, Vec::len))
            .flat_map(|s| {
                Layer::ALL.iter().map(move |&l| {
                    let mut s = s.clone();
                    s.push(l);
                    s
                })
            })
            .collect();
        stacks.extend(longer);
    }
    stacks
        .into_iter()
        .filter(|s| envelope::validate_stack(s, keys).is_empty())
        .collect()
}

#[test]
fn every_valid_stack_opens_what_it_sealed_byte_for_byte() {
    let keys = round_trip_keys();
    let stacks = valid_stacks(&keys);
    for named in [
        &[Layer::Form, Layer::Aes][..],
        &[Layer::Token, Layer::Jwt],
        &[Layer::Bearer, Layer::Jwt],
        &[Layer::Token, Layer::Jwt, Layer::Aes],
        &[Layer::Form, Layer::Aes, Layer::Jwt],
        &[Layer::Aes],
        &[Layer::Jwt],
    ] {
        assert!(
            stacks.iter().any(|s| s == named),
            "{named:?} not among the valid stacks {stacks:?}"
        );
    }
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&json_object(3), |plain| {
        for stack in &stacks {
            // A `passcode` layer checks the peer's passcode inside the JSON it follows.
            let plain = if stack.contains(&Layer::Passcode) {
                let inner = plain.trim().strip_prefix('{').unwrap_or("}").trim_start();
                let sep = if inner.starts_with('}') { "" } else { "," };
                format!(r#"{{"passcode":"{PASSCODE}"{sep}{inner}"#)
            } else {
                plain.clone()
            };
            let shapes: &[BodyShape] = if stack.first() == Some(&Layer::Form) {
                &[BodyShape::Form, BodyShape::Json]
            } else {
                &[BodyShape::Json]
            };
            for &shape in shapes {
                let sealed = envelope::seal(stack, &keys, plain.as_bytes(), shape)
                    .map_err(|e| TestCaseError::fail(format!("{stack:?} seal: {e:?}")))?;
                let req = Incoming {
                    content_type: Some(sealed.content_type),
                    authorization: sealed.authorization.as_deref(),
                    passcode_header: None,
                    body: &sealed.body,
                };
                let valid = envelope::Stack::new(stack)
                    .map_err(|p| TestCaseError::fail(format!("{stack:?}: {p:?}")))?;
                let opened = envelope::open(&valid, &keys, &req, 1_700_000_000)
                    .map_err(|e| TestCaseError::fail(format!("{stack:?} open: {e:?}")))?;
                prop_assert_eq!(
                    String::from_utf8_lossy(&opened.plain),
                    plain.as_str(),
                    "{:?} {:?}",
                    stack,
                    shape
                );
                prop_assert_eq!(opened.plain.as_slice(), plain.as_bytes());
                prop_assert_eq!(opened.shape, shape);
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
