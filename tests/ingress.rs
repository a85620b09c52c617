//! End-to-end ingress behaviour: sealed requests in from loopback clients, the sidecar
//! in-process, and a stand-in application that records exactly what reached it.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Full;
use jsonwebtoken::Algorithm;

use bsk_sidecar::envelope::{self, aes, BodyShape, Incoming, Layer};

use support::*;

/// The usual routes: one per wire shape, all in front of `{APP}`.
const CONFIG: &str = r#"
admin: { listen: 127.0.0.1:0, metrics: open }
limits:
  per_ip_rate: { per_second: 1000, burst: 1000 }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /form, from: bsk, fresh: off, envelope: [form, aes], max_body: 4KiB, upstream: "http://{APP}/app/form" }
      - { path: /token, from: bsk, fresh: off, envelope: [token, jwt], upstream: "http://{APP}/app/token" }
      - { path: /bearer, from: bsk, fresh: off, envelope: [bearer, jwt], upstream: "http://{APP}/app/bearer" }
      - { path: /token-aes, from: bsk, fresh: off, envelope: [token, jwt, aes], upstream: "http://{APP}/app/token-aes" }
"#;

async fn start(config: &str, app: &Upstream) -> Sidecar {
    Sidecar::start(
        config,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{APP}", app.addr.to_string()),
        ],
    )
    .await
}

fn bsk_keys(sc: &Sidecar) -> envelope::PeerKeys {
    sc.keys("bsk")
}

/// A valid `[form, aes]` request carrying [`TICKET_PLAIN`].
fn good_form(sc: &Sidecar, path: &str) -> Request<Full<Bytes>> {
    let sealed = seal(
        &[Layer::Form, Layer::Aes],
        &bsk_keys(sc),
        TICKET_PLAIN.as_bytes(),
        BodyShape::Form,
    );
    sealed_post(sc.addr, path, &sealed)
}

/// Asserts what the application must (and must not) see on a forwarded request.
fn assert_clean_forward(rec: &Recorded, answer: &Answer, path: &str, body: &[u8], client: &str) {
    assert_eq!(rec.method, Method::POST);
    assert_eq!(rec.path, path);
    assert_eq!(
        rec.body.as_ref(),
        body,
        "app got {:?}",
        String::from_utf8_lossy(&rec.body)
    );
    let all = |name: &str| -> Vec<String> {
        rec.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(all("content-type"), ["application/json"]);
    let id = answer
        .header("x-request-id")
        .expect("answer carries x-request-id");
    assert_eq!(all("x-request-id"), [id]);
    assert_eq!(all("x-bsk-peer"), ["bsk"]);
    // The client's own X-Forwarded-For claim is replaced, never passed on.
    assert_eq!(all("x-forwarded-for"), [client]);
    for gone in ["authorization", "x-passcode", "x-hop-secret"] {
        assert!(
            rec.headers.get(gone).is_none(),
            "{gone} reached the app: {:?}",
            rec.headers
        );
    }
    // Client headers are forwarded by allowlist: one no route names never arrives.
    assert!(
        rec.headers.get("x-custom").is_none(),
        "an unlisted client header reached the app: {:?}",
        rec.headers
    );
}

/// Adds the headers a forwarder must clean up: a spoofed X-Forwarded-For, a header the
/// client marks hop-by-hop, and an ordinary one that must pass.
fn with_hostile_headers(mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let h = req.headers_mut();
    h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    h.insert(
        header::CONNECTION,
        "keep-alive, X-Hop-Secret".parse().unwrap(),
    );
    h.insert("x-hop-secret", "do-not-forward".parse().unwrap());
    h.insert("x-custom", "kept".parse().unwrap());
    req
}

/// One way a peer may send a request, and what the application must receive from it.
struct Shape {
    name: &'static str,
    req: Request<Full<Bytes>>,
    app_path: &'static str,
    plain: Vec<u8>,
}

impl Shape {
    fn new(
        name: &'static str,
        req: Request<Full<Bytes>>,
        app_path: &'static str,
        plain: Vec<u8>,
    ) -> Shape {
        Shape {
            name,
            req,
            app_path,
            plain,
        }
    }
}

#[tokio::test]
async fn every_wire_shape_reaches_the_app_as_the_exact_plain_json() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(CONFIG, &app).await;
    let keys = bsk_keys(&sc);
    let to = sc.addr;

    // The sealer must reproduce the spec's own vector before we trust it below.
    let spec_sealed = seal(
        &[Layer::Form, Layer::Aes],
        &keys,
        SPEC_PLAIN.as_bytes(),
        BodyShape::Form,
    );
    assert_eq!(spec_sealed.body, form_body("BSK", SPEC_CIPHER));

    let claims = with_times(TICKET_PLAIN);
    let inner_enc = aes_b64(SPEC_KEY, SPEC_IV, TICKET_PLAIN.as_bytes());
    let claims_with_enc = with_times(&format!(r#"{{"encData":"{inner_enc}"}}"#));
    let json_form = seal(
        &[Layer::Form, Layer::Aes],
        &keys,
        TICKET_PLAIN.as_bytes(),
        BodyShape::Json,
    );
    assert!(json_form.body.starts_with(br#"{"agId":"BSK","encData":""#));
    assert!(
        SPEC_CIPHER.contains('+'),
        "the vector exercises an unencoded +"
    );

    let shapes = vec![
        Shape::new(
            "form urlencoded, spec vector",
            sealed_post(to, "/form", &spec_sealed),
            "/app/form",
            SPEC_PLAIN.as_bytes().to_vec(),
        ),
        Shape::new(
            "form urlencoded, 17-digit ticketNo",
            good_form(&sc, "/form"),
            "/app/form",
            TICKET_PLAIN.as_bytes().to_vec(),
        ),
        Shape::new(
            "form as a JSON object",
            sealed_post(to, "/form", &json_form),
            "/app/form",
            TICKET_PLAIN.as_bytes().to_vec(),
        ),
        Shape::new(
            "form whose + was not percent-encoded",
            post(
                to,
                "/form",
                Some("application/x-www-form-urlencoded"),
                format!("agId=BSK&encData={SPEC_CIPHER}"),
            ),
            "/app/form",
            SPEC_PLAIN.as_bytes().to_vec(),
        ),
        Shape::new(
            "token + jwt",
            post(
                to,
                "/token",
                Some("application/json"),
                token_body(PASSCODE, &hs256(&claims)),
            ),
            "/app/token",
            claims.as_bytes().to_vec(),
        ),
        Shape::new(
            "bearer + jwt, passcode in X-Passcode",
            request(Method::POST, to, "/bearer")
                .header(header::AUTHORIZATION, format!("Bearer {}", hs256(&claims)))
                .header("x-passcode", PASSCODE)
                .body(Full::new(Bytes::new()))
                .unwrap(),
            "/app/bearer",
            claims.as_bytes().to_vec(),
        ),
        Shape::new(
            "bearer + jwt, as sealed with the passcode in the body",
            sealed_post(
                to,
                "/bearer",
                &seal(
                    &[Layer::Bearer, Layer::Jwt],
                    &keys,
                    claims.as_bytes(),
                    BodyShape::Json,
                ),
            ),
            "/app/bearer",
            claims.as_bytes().to_vec(),
        ),
        Shape::new(
            "token + jwt carrying aes",
            post(
                to,
                "/token-aes",
                Some("application/json"),
                token_body(PASSCODE, &hs256(&claims_with_enc)),
            ),
            "/app/token-aes",
            TICKET_PLAIN.as_bytes().to_vec(),
        ),
    ];

    for Shape {
        name,
        req,
        app_path,
        plain,
    } in shapes
    {
        app.clear();
        let answer = send_from(LOCAL2, to, with_hostile_headers(req))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(answer.status, 200, "{name}: {}", answer.text());
        // The echoing app's answer comes back unchanged.
        assert_eq!(answer.body.as_ref(), plain.as_slice(), "{name}");
        let rec = app.only();
        assert_clean_forward(&rec, &answer, app_path, &plain, "127.0.0.2");
    }
}

#[tokio::test]
async fn pass_through_returns_the_apps_answer_and_status_unchanged() {
    const HTML: &str = "<html><body><h1>Department form</h1><p>Application initiated &amp; saved.</p></body></html>";
    let html = Upstream::start(Behaviour::Fixed {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: HTML.into(),
    })
    .await;
    let conflict = Upstream::start(Behaviour::Fixed {
        status: 409,
        content_type: "application/json",
        body: r#"{"statusCode":409,"message":"duplicate ticketNo"}"#.into(),
    })
    .await;
    let sc = Sidecar::start(
        r#"
admin: { listen: off }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /bsk/landing, from: bsk, fresh: off, envelope: [form, aes], ip_check: false, upstream: "http://{HTML}/bsk/landing" }
      - { path: /bsk/status, from: bsk, fresh: off, envelope: [form, aes], upstream: "http://{CONFLICT}/bsk/status" }
"#,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{HTML}", html.addr.to_string()),
            ("{CONFLICT}", conflict.addr.to_string()),
        ],
    )
    .await;

    let answer = send(sc.addr, good_form(&sc, "/bsk/landing")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(answer.text(), HTML);
    assert!(answer.header("x-request-id").is_some());
    assert_eq!(html.only().body.as_ref(), TICKET_PLAIN.as_bytes());

    // An application error is the application's answer, not turned into the sidecar's own.
    let answer = send(sc.addr, good_form(&sc, "/bsk/status")).await;
    assert_eq!(answer.status, 409);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.text(),
        r#"{"statusCode":409,"message":"duplicate ticketNo"}"#
    );
}

#[tokio::test]
async fn sealed_responses_open_to_exactly_the_apps_json() {
    const APP_JSON: &str = r#"{"userId":8527419636,"ticketNo":20221202153322882,"applicationStage":[{"stage":"Submitted","date":"2022-12-02"}],"statusCode":200}"#;
    let app = Upstream::start(Behaviour::Fixed {
        status: 200,
        content_type: "application/json",
        body: APP_JSON.into(),
    })
    .await;
    let sc = start(
        r#"
admin: { listen: off }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /status-wrapped
        from: bsk
        fresh: off
        envelope: [token, jwt]
        upstream: "http://{APP}/status"
        response: { mode: seal, wrap: { status: "S", statusCode: 200 } }
      - path: /token-aes-wrapped
        from: bsk
        fresh: off
        envelope: [token, jwt, aes]
        upstream: "http://{APP}/status"
        response: { mode: seal, wrap: { status: "S", statusCode: 200 } }
      - path: /form-wrapped
        from: bsk
        fresh: off
        envelope: [form, aes]
        upstream: "http://{APP}/status"
        response: { mode: seal, wrap: { status: "S", statusCode: 200 } }
      - path: /form-sealed
        from: bsk
        fresh: off
        envelope: [form, aes]
        upstream: "http://{APP}/status"
        response: { mode: seal }
"#,
        &app,
    )
    .await;
    let to = sc.addr;
    // The sidecar's answers carry no `exp` (the app's JSON has none): open them that way.
    let mut open_keys = bsk_keys(&sc);
    open_keys.jwt = Some(response_jwt_key());
    let open = |layers: &[Layer], ct: Option<&str>, body: &[u8]| -> Vec<u8> {
        let req = Incoming {
            content_type: ct,
            authorization: None,
            passcode_header: None,
            body,
        };
        let stack = envelope::Stack::new(layers).unwrap_or_else(|p| panic!("{p:?}"));
        envelope::open(&stack, &open_keys, &req, unix_now() as u64)
            .unwrap_or_else(|e| panic!("answer does not open with {layers:?}: {e}"))
            .plain
    };
    let wrapped_enc_data = |answer: &Answer| -> String {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let v = answer.json();
        let obj = v.as_object().expect("a JSON object");
        assert_eq!(obj.len(), 3, "{v}");
        assert_eq!(v["status"], "S");
        assert_eq!(v["statusCode"], 200);
        v["encData"].as_str().expect("encData").to_string()
    };

    // [token, jwt] + wrap: encData is a token whose payload is the app's JSON.
    let claims = with_times(TICKET_PLAIN);
    let body = token_body(PASSCODE, &hs256(&claims));
    let answer = send(
        to,
        post(to, "/status-wrapped", Some("application/json"), body),
    )
    .await;
    let enc = wrapped_enc_data(&answer);
    let verified = envelope::jwt::verify(&response_jwt_key(), &enc, unix_now() as u64).unwrap();
    assert_eq!(verified.payload, APP_JSON.as_bytes());
    assert_eq!(
        open(&[Layer::Jwt], None, enc.as_bytes()),
        APP_JSON.as_bytes()
    );

    // [token, jwt, aes] + wrap: encData is a token carrying the app's JSON encrypted.
    let claims = with_times(&format!(
        r#"{{"encData":"{}"}}"#,
        aes_b64(SPEC_KEY, SPEC_IV, TICKET_PLAIN.as_bytes())
    ));
    let body = token_body(PASSCODE, &hs256(&claims));
    let answer = send(
        to,
        post(to, "/token-aes-wrapped", Some("application/json"), body),
    )
    .await;
    let enc = wrapped_enc_data(&answer);
    assert_eq!(
        open(&[Layer::Jwt, Layer::Aes], None, enc.as_bytes()),
        APP_JSON.as_bytes()
    );

    // [form, aes] + wrap: encData is the ciphertext itself.
    let answer = send(to, good_form(&sc, "/form-wrapped")).await;
    let enc = wrapped_enc_data(&answer);
    let key = aes::AesKey::new(SPEC_KEY.as_bytes(), SPEC_IV.as_bytes()).unwrap();
    assert_eq!(
        aes::decrypt(&[key], &enc, |_| true).unwrap(),
        APP_JSON.as_bytes()
    );

    // [form, aes] without wrap: the answer comes in the request's own shape.
    let answer = send(to, good_form(&sc, "/form-sealed")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(answer.text().starts_with("agId=BSK&encData="));
    assert_eq!(
        open(
            &[Layer::Form, Layer::Aes],
            answer.header("content-type"),
            &answer.body
        ),
        APP_JSON.as_bytes()
    );
    let json_req = seal(
        &[Layer::Form, Layer::Aes],
        &bsk_keys(&sc),
        TICKET_PLAIN.as_bytes(),
        BodyShape::Json,
    );
    let answer = send(to, sealed_post(to, "/form-sealed", &json_req)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let v = answer.json();
    assert_eq!(v["agId"], "BSK");
    assert_eq!(
        open(
            &[Layer::Form, Layer::Aes],
            answer.header("content-type"),
            &answer.body
        ),
        APP_JSON.as_bytes()
    );
    // The app was asked four + one times, always with the opened plain JSON.
    assert_eq!(app.count(), 5);
}

/// A peer reachable only from 127.0.0.2, on a mixed listener and on a strict one.
const ALLOWLIST_CONFIG: &str = r#"
admin: { listen: 127.0.0.1:0, metrics: open }
limits:
  per_ip_rate: { per_second: 1000, burst: 1000 }
peers:
  partner:
    agid: PARTNER
    aes:
      keys:
        - { key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }
    allow: [127.0.0.2/32]
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /checked, from: partner, fresh: off, envelope: [form, aes], upstream: "http://{APP}/checked" }
      - { path: /open, from: partner, fresh: off, envelope: [form, aes], ip_check: false, upstream: "http://{APP}/open" }
  - name: strict
    listen: 127.0.0.4:0
    routes:
      - { path: /checked, from: partner, fresh: off, envelope: [form, aes], upstream: "http://{APP}/strict" }
"#;

fn partner_form(sc: &Sidecar, to: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    let sealed = seal(
        &[Layer::Form, Layer::Aes],
        &sc.keys("partner"),
        TICKET_PLAIN.as_bytes(),
        BodyShape::Form,
    );
    sealed_post(to, path, &sealed)
}

#[tokio::test]
async fn route_allowlist_admits_listed_address_and_refuses_others() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(ALLOWLIST_CONFIG, &app).await;
    let to = sc.addr;

    let denied = send_from(LOCAL3, to, partner_form(&sc, to, "/checked"))
        .await
        .unwrap();
    denied.assert_error(403, "ip_denied");
    assert_eq!(app.count(), 0, "a denied request reached the app");

    let ok = send_from(LOCAL2, to, partner_form(&sc, to, "/checked"))
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(app.only().path, "/checked");
    app.clear();

    // `ip_check: false` (the browser-posted landing page): any address.
    let open = send_from(LOCAL3, to, partner_form(&sc, to, "/open"))
        .await
        .unwrap();
    assert_eq!(open.status, 200, "{}", open.text());
    let rec = app.only();
    assert_eq!(rec.path, "/open");
    assert_eq!(rec.headers["x-forwarded-for"], "127.0.0.3");
}

#[tokio::test]
async fn strict_listener_closes_denied_connections_before_http() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(ALLOWLIST_CONFIG, &app).await;
    let strict = sc.listener("strict");

    let refused = send_from(LOCAL3, strict, partner_form(&sc, strict, "/checked")).await;
    assert!(
        refused.is_err(),
        "expected the connection to be closed at accept, got an HTTP answer: {refused:?}"
    );
    assert_eq!(app.count(), 0);

    let ok = send_from(LOCAL2, strict, partner_form(&sc, strict, "/checked"))
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(app.only().path, "/strict");

    let metrics = admin_get(sc.admin.unwrap(), "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bsk_sidecar_connections_refused_total{")
                && l.contains(r#"listener="strict""#)
                && l.contains(r#"reason="ip_denied""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

fn assert_rate_limited(answer: &Answer, reason: &str) {
    answer.assert_error(429, reason);
    let retry: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry >= 1, "Retry-After {retry}");
}

#[tokio::test]
async fn peer_rate_limit_refuses_past_the_burst_with_retry_after() {
    let app = Upstream::start(Behaviour::Echo).await;
    let peer = format!("{PEER_BSK}    rate: {{ per_second: 1, burst: 3 }}\n");
    let sc = Sidecar::start(
        CONFIG,
        &[("{PEER_BSK}", peer), ("{APP}", app.addr.to_string())],
    )
    .await;
    for i in 0..3 {
        let a = send(sc.addr, good_form(&sc, "/form")).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
    }
    // The bucket is the peer's: another route of the same peer is refused too.
    let claims = with_times(TICKET_PLAIN);
    let a = send(
        sc.addr,
        post(
            sc.addr,
            "/token",
            Some("application/json"),
            token_body(PASSCODE, &hs256(&claims)),
        ),
    )
    .await;
    assert_rate_limited(&a, "rate_limited_peer");
    assert_eq!(app.count(), 3);
}

#[tokio::test]
async fn per_ip_rate_limit_is_per_client_address() {
    let app = Upstream::start(Behaviour::Echo).await;
    let config = CONFIG.replace(
        "per_ip_rate: { per_second: 1000, burst: 1000 }",
        "per_ip_rate: { per_second: 1, burst: 2 }",
    );
    let sc = start(&config, &app).await;
    for _ in 0..2 {
        let a = send_from(LOCAL2, sc.addr, good_form(&sc, "/form"))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let a = send_from(LOCAL2, sc.addr, good_form(&sc, "/form"))
        .await
        .unwrap();
    assert_rate_limited(&a, "rate_limited_ip");
    // Another address has its own bucket.
    let a = send_from(LOCAL3, sc.addr, good_form(&sc, "/form"))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(app.count(), 3);
}

#[tokio::test]
async fn route_rate_limit_is_per_route() {
    let app = Upstream::start(Behaviour::Echo).await;
    let config = CONFIG.replace(
        "- { path: /form, from: bsk, fresh: off, envelope: [form, aes], max_body: 4KiB,",
        "- { path: /form, from: bsk, fresh: off, envelope: [form, aes], max_body: 4KiB, rate: { per_second: 1, burst: 2 },",
    );
    assert_ne!(config, CONFIG);
    let sc = start(&config, &app).await;
    for _ in 0..2 {
        let a = send(sc.addr, good_form(&sc, "/form")).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let a = send(sc.addr, good_form(&sc, "/form")).await;
    assert_rate_limited(&a, "rate_limited_route");
    // Another route of the same peer is not affected.
    let claims = with_times(TICKET_PLAIN);
    let a = send(
        sc.addr,
        post(
            sc.addr,
            "/token",
            Some("application/json"),
            token_body(PASSCODE, &hs256(&claims)),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(app.count(), 3);
}

const BODY_CONFIG: &str = r#"
admin: { listen: off }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /small, from: bsk, fresh: off, envelope: [form, aes], max_body: 1KiB, upstream: "http://{APP}/small" }
      - { path: /slow-body, from: bsk, fresh: off, envelope: [form, aes], body_timeout: 300ms, upstream: "http://{APP}/slow" }
      - { path: /token, from: bsk, fresh: off, envelope: [token, jwt], upstream: "http://{APP}/token" }
"#;

/// `body` in HTTP/1.1 chunked encoding, in chunks of `size`.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn body_over_max_body_is_413_with_content_length_and_chunked() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(BODY_CONFIG, &app).await;
    let to = sc.addr;
    let oversized = format!("agId=BSK&encData={}", "A".repeat(2000));

    let a = send(
        to,
        post(
            to,
            "/small",
            Some("application/x-www-form-urlencoded"),
            oversized.clone(),
        ),
    )
    .await;
    a.assert_error(413, "body_too_large");

    let head = "POST /small HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut raw = head.as_bytes().to_vec();
    raw.extend(chunked(oversized.as_bytes(), 500));
    let a = raw_exchange(to, &raw).await.unwrap();
    a.assert_error(413, "body_too_large");
    assert_eq!(app.count(), 0);

    // Control: a chunked body within the limit is read and forwarded.
    let sealed = seal(
        &[Layer::Form, Layer::Aes],
        &bsk_keys(&sc),
        TICKET_PLAIN.as_bytes(),
        BodyShape::Form,
    );
    let mut raw = head.as_bytes().to_vec();
    raw.extend(chunked(&sealed.body, 50));
    let a = raw_exchange(to, &raw).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(app.only().body.as_ref(), TICKET_PLAIN.as_bytes());
}

#[tokio::test]
async fn stalled_body_is_408() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(BODY_CONFIG, &app).await;
    let mut stream = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    let head = "POST /slow-body HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nagId=BSK&encData=m4p3";
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    // The rest of the body never comes; the sidecar gives up on its own.
    let a = read_answer(&mut stream).await.unwrap();
    a.assert_error(408, "body_timeout");
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn content_type_that_does_not_fit_the_envelope_is_415() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(BODY_CONFIG, &app).await;
    let to = sc.addr;
    let sealed = seal(
        &[Layer::Form, Layer::Aes],
        &bsk_keys(&sc),
        TICKET_PLAIN.as_bytes(),
        BodyShape::Form,
    );
    let a = send(
        to,
        post(
            to,
            "/small",
            Some("multipart/form-data; boundary=x"),
            sealed.body.clone(),
        ),
    )
    .await;
    a.assert_error(415, "unsupported_media_type");
    let claims = with_times(TICKET_PLAIN);
    let a = send(
        to,
        post(
            to,
            "/token",
            Some("application/x-www-form-urlencoded"),
            token_body(PASSCODE, &hs256(&claims)),
        ),
    )
    .await;
    a.assert_error(415, "unsupported_media_type");
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(CONFIG, &app).await;
    let to = sc.addr;
    let a = send(to, good_form(&sc, "/no/such/route")).await;
    a.assert_error(404, "not_found");
    let a = send(
        to,
        request(Method::GET, to, "/form")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let v = a.assert_error(405, "method_not_allowed");
    assert_eq!(a.header("allow"), Some("POST"));
    for field in ["statusCode", "message", "reason", "requestId"] {
        assert!(v.get(field).is_some(), "{field} missing in {v}");
    }
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let slow = Upstream::start(Behaviour::Delay(Duration::from_secs(5))).await;
    let down = closed_port().await;
    let sc = Sidecar::start(
        r#"
admin: { listen: off }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /down, from: bsk, fresh: off, envelope: [form, aes], upstream: "http://{DOWN}/down" }
      - { path: /slow, from: bsk, fresh: off, envelope: [form, aes], upstream_timeout: 300ms, upstream: "http://{SLOW}/slow" }
"#,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{DOWN}", down.to_string()),
            ("{SLOW}", slow.addr.to_string()),
        ],
    )
    .await;
    let a = send(sc.addr, good_form(&sc, "/down")).await;
    a.assert_error(502, "upstream_unavailable");
    let a = send(sc.addr, good_form(&sc, "/slow")).await;
    a.assert_error(504, "upstream_timeout");
    // It did reach the application, which was simply too slow.
    assert_eq!(slow.only().body.as_ref(), TICKET_PLAIN.as_bytes());
}

/// One hostile request: what it is, and the answer it must get.
struct Case {
    name: &'static str,
    req: Request<Full<Bytes>>,
    status: u16,
    reason: &'static str,
}

/// Flips the lowest bit of ciphertext byte `i` (negative: from the end).
fn flip(b64: &str, i: isize) -> String {
    let mut ct = b64_decode(b64);
    let i = if i < 0 { ct.len() as isize + i } else { i } as usize;
    ct[i] ^= 0x01;
    b64_encode(&ct)
}

fn truncate(b64: &str, drop: usize) -> String {
    let ct = b64_decode(b64);
    b64_encode(&ct[..ct.len() - drop])
}

#[tokio::test]
async fn hostile_inputs_are_refused_and_never_reach_the_app() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(CONFIG, &app).await;
    let to = sc.addr;
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json");
    let now = unix_now();

    let good = aes_b64(SPEC_KEY, SPEC_IV, TICKET_PLAIN.as_bytes());
    assert!(b64_decode(&good).len() >= 48, "needs at least three blocks");
    let form = |enc: &str| post(to, "/form", FORM, form_body("BSK", enc));
    let raw_form = |body: &str| post(to, "/form", FORM, body.to_string());

    let claims = with_times(TICKET_PLAIN);
    let valid_token = hs256(&claims);
    let token = |tok: &str| post(to, "/token", JSON, token_body(PASSCODE, tok));
    let token_claims = |c: &str| token(&hs256(c));
    let raw_token = |body: String| post(to, "/token", JSON, body);
    let bearer = |auth: Option<&str>, passcode: Option<&str>| {
        let mut b = request(Method::POST, to, "/bearer");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        if let Some(p) = passcode {
            b = b.header("x-passcode", p);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let token_aes = |enc: &str| {
        let c = with_times(&format!(r#"{{"encData":"{enc}"}}"#));
        post(to, "/token-aes", JSON, token_body(PASSCODE, &hs256(&c)))
    };
    let (h, p, _) = {
        let mut it = valid_token.split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let other_payload = hs256(&with_times(r#"{"userid":1111111111,"ticketNo":1}"#));
    let tampered_payload = format!(
        "{h}.{}.{}",
        other_payload.split('.').nth(1).unwrap(),
        valid_token.split('.').nth(2).unwrap()
    );
    let sign_as = |alg: Algorithm, name: &str, secret: &str| {
        raw_jwt(
            &format!(r#"{{"alg":"{name}","typ":"JWT"}}"#),
            claims.as_bytes(),
            secret,
            Some(alg),
        )
    };

    let bad = "bad_envelope";
    #[rustfmt::skip]
    let cases = vec![
        // --- [form, aes]: every undecryptable body answers the same.
        Case { name: "bit flip in the first ciphertext block", req: form(&flip(&good, 0)), status: 400, reason: bad },
        Case { name: "bit flip in a middle ciphertext block", req: form(&flip(&good, 37)), status: 400, reason: bad },
        Case { name: "bit flip in the last block (padding garbled)", req: form(&flip(&good, -1)), status: 400, reason: bad },
        Case { name: "bit flip reaching the padding byte", req: form(&flip(&good, -17)), status: 400, reason: bad },
        Case { name: "encrypted with the wrong key", req: form(&aes_b64("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", SPEC_IV, TICKET_PLAIN.as_bytes())), status: 400, reason: bad },
        Case { name: "encrypted with the wrong IV", req: form(&aes_b64(SPEC_KEY, "0000000000000000", TICKET_PLAIN.as_bytes())), status: 400, reason: bad },
        Case { name: "ciphertext truncated by a whole block", req: form(&truncate(&good, 16)), status: 400, reason: bad },
        Case { name: "ciphertext length not a multiple of 16", req: form(&truncate(&good, 5)), status: 400, reason: bad },
        Case { name: "empty encData", req: form(""), status: 400, reason: bad },
        Case { name: "missing encData", req: raw_form("agId=BSK"), status: 400, reason: bad },
        Case { name: "missing agId", req: raw_form(&format!("encData={}", urlenc(&good))), status: 400, reason: bad },
        Case { name: "duplicate encData", req: raw_form(&format!("agId=BSK&encData={0}&encData={0}", urlenc(&good))), status: 400, reason: bad },
        Case { name: "duplicate agId in a JSON body", req: post(to, "/form", JSON, format!(r#"{{"agId":"BSK","agId":"BSK","encData":"{good}"}}"#)), status: 400, reason: bad },
        Case { name: "encData a number in a JSON body", req: post(to, "/form", JSON, r#"{"agId":"BSK","encData":12345}"#), status: 400, reason: bad },
        Case { name: "JSON array instead of a form object", req: post(to, "/form", JSON, "[1,2,3]"), status: 400, reason: bad },
        Case { name: "non-base64 characters in encData", req: form(&format!("!!*~{}", &good[4..])), status: 400, reason: bad },
        Case { name: "valid encryption of non-JSON plaintext", req: form(&aes_b64(SPEC_KEY, SPEC_IV, b"userid=8527419636&ticketNo=1")), status: 400, reason: bad },
        Case { name: "valid encryption of invalid UTF-8", req: form(&aes_b64(SPEC_KEY, SPEC_IV, b"{\"name\":\"\xff\xfe\xfd\"}")), status: 400, reason: bad },
        Case { name: "zero-padded plaintext (PHP without PKCS#7)", req: form(&aes_zero_padded_b64(SPEC_KEY, SPEC_IV, br#"{"ticketNo":20221202153322882}"#)), status: 400, reason: bad },
        Case { name: "empty body on a form route", req: raw_form(""), status: 400, reason: bad },
        Case { name: "tampered encData inside a valid JWT", req: token_aes(&flip(&good, -17)), status: 400, reason: bad },
        Case { name: "non-base64 encData inside a valid JWT", req: token_aes("not base64 at all!"), status: 400, reason: bad },
        Case { name: "wrong agId", req: post(to, "/form", FORM, form_body("WBX", &good)), status: 401, reason: "wrong_agid" },
        Case { name: "agId in the wrong case", req: post(to, "/form", FORM, form_body("bsk", &good)), status: 401, reason: "wrong_agid" },
        Case { name: "oversized body", req: form(&"A".repeat(5000)), status: 413, reason: "body_too_large" },
        Case { name: "wrong content type on a form route", req: post(to, "/form", Some("text/html"), form_body("BSK", &good)), status: 415, reason: "unsupported_media_type" },
        Case { name: "wrong content type on a token route", req: post(to, "/token", FORM, token_body(PASSCODE, &valid_token)), status: 415, reason: "unsupported_media_type" },
        // --- [token, jwt]
        Case { name: "alg none token", req: token(&raw_jwt(r#"{"alg":"none","typ":"JWT"}"#, claims.as_bytes(), "", None)), status: 401, reason: "alg_not_allowed" },
        Case { name: "HS512 token when only HS256 is allowed", req: token(&sign_as(Algorithm::HS512, "HS512", JWT_SECRET)), status: 401, reason: "alg_not_allowed" },
        Case { name: "RS256 header over an HMAC signature", req: token(&sign_as(Algorithm::HS256, "RS256", JWT_SECRET)), status: 401, reason: "alg_not_allowed" },
        Case { name: "token signed with the wrong secret", req: token(&sign_as(Algorithm::HS256, "HS256", "not-the-shared-secret-at-all-000000")), status: 401, reason: "bad_signature" },
        Case { name: "token with a tampered payload", req: token(&tampered_payload), status: 401, reason: "bad_signature" },
        Case { name: "expired token", req: token_claims(&with_claims(TICKET_PLAIN, &format!(r#""iat":{},"exp":{}"#, now - 7200, now - 3600))), status: 401, reason: "expired" },
        Case { name: "nbf in the future", req: token_claims(&with_claims(TICKET_PLAIN, &format!(r#""iat":{now},"nbf":{},"exp":{}"#, now + 3600, now + 7200))), status: 401, reason: "not_yet_valid" },
        Case { name: "iat in the future", req: token_claims(&with_claims(TICKET_PLAIN, &format!(r#""iat":{},"exp":{}"#, now + 3600, now + 7200))), status: 401, reason: "issued_in_future" },
        Case { name: "missing exp when required", req: token_claims(&with_claims(TICKET_PLAIN, &format!(r#""iat":{now}"#))), status: 401, reason: "missing_exp" },
        Case { name: "exp not a number", req: token_claims(&with_claims(TICKET_PLAIN, r#""exp":"tomorrow""#)), status: 401, reason: "malformed_claims" },
        Case { name: "malformed JWT with two segments", req: token(&format!("{h}.{p}")), status: 401, reason: "malformed_token" },
        Case { name: "JWT with the signature stripped", req: token(&format!("{h}.{p}.")), status: 401, reason: "malformed_token" },
        Case { name: "JWT header marking an extension critical", req: token(&raw_jwt(r#"{"alg":"HS256","crit":["exp"]}"#, claims.as_bytes(), JWT_SECRET, Some(Algorithm::HS256))), status: 401, reason: "malformed_token" },
        Case { name: "wrong passcode", req: raw_token(String::from_utf8(token_body("000000", &valid_token)).unwrap()), status: 401, reason: "bad_passcode" },
        Case { name: "passcode as the wrong number", req: raw_token(format!(r#"{{"passcode":123456,"token":"{valid_token}"}}"#)), status: 401, reason: "bad_passcode" },
        Case { name: "passcode as a number with a fraction", req: raw_token(format!(r#"{{"passcode":376423.0,"token":"{valid_token}"}}"#)), status: 401, reason: "bad_passcode" },
        Case { name: "missing passcode", req: raw_token(format!(r#"{{"token":"{valid_token}"}}"#)), status: 401, reason: "malformed_token" },
        Case { name: "passcode as a boolean", req: raw_token(format!(r#"{{"passcode":true,"token":"{valid_token}"}}"#)), status: 401, reason: "malformed_token" },
        Case { name: "duplicate passcode fields", req: raw_token(format!(r#"{{"passcode":"000000","passcode":"376423","token":"{valid_token}"}}"#)), status: 401, reason: "malformed_token" },
        Case { name: "empty body on a token route", req: raw_token(String::new()), status: 401, reason: "malformed_token" },
        Case { name: "body not JSON on a token route", req: raw_token(format!("passcode={PASSCODE}&token={valid_token}")), status: 401, reason: "malformed_token" },
        // --- [bearer, jwt]
        Case { name: "Authorization missing on a bearer route", req: bearer(None, Some(PASSCODE)), status: 401, reason: "malformed_token" },
        Case { name: "Bearer with garbage", req: bearer(Some("Bearer garbage"), Some(PASSCODE)), status: 401, reason: "malformed_token" },
        Case { name: "Basic instead of Bearer", req: bearer(Some("Basic dXNlcjpwYXNz"), Some(PASSCODE)), status: 401, reason: "malformed_token" },
        Case { name: "valid bearer token without a passcode", req: bearer(Some(&format!("Bearer {valid_token}")), None), status: 401, reason: "bad_passcode" },
        Case { name: "valid bearer token with the wrong X-Passcode", req: bearer(Some(&format!("Bearer {valid_token}")), Some("000000")), status: 401, reason: "bad_passcode" },
    ];
    assert!(cases.len() >= 30);

    let mut undecryptable = Vec::new();
    let mut failures = Vec::new();
    for case in cases {
        let answer = send(to, case.req).await;
        let reason = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string));
        if (answer.status.as_u16(), reason.as_deref()) != (case.status, Some(case.reason)) {
            let mut text = answer.text();
            text.truncate(200);
            failures.push(format!(
                "`{}`: expected {} {}, got {} {text}",
                case.name, case.status, case.reason, answer.status
            ));
        } else {
            answer.assert_error(case.status, case.reason);
        }
        if app.count() != 0 {
            failures.push(format!("`{}` reached the app", case.name));
            app.clear();
        }
        if case.reason == bad {
            undecryptable.push((case.name, normalized(&answer)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A padding oracle must learn nothing: one answer for every undecryptable request.
    assert!(undecryptable.len() >= 20);
    let (first_name, first) = &undecryptable[0];
    for (name, seen) in &undecryptable[1..] {
        assert_eq!(
            seen, first,
            "`{name}` answers differently from `{first_name}`"
        );
    }

    // ... and metrics, which more people read than logs, say only what the caller was
    // told: one reason for every form/aes failure, never the step (a padding oracle).
    let metrics = admin_get(sc.admin.unwrap(), "/metrics").await.text();
    for precise in [
        "bad_padding",
        "bad_base64",
        "bad_length",
        "not_utf8",
        "not_json",
        "malformed_form",
    ] {
        assert!(
            !metrics.contains(&format!(r#"reason="{precise}""#)),
            "{precise} in metrics:\n{metrics}"
        );
    }
    for reason in [
        "bad_envelope",
        "wrong_agid",
        "alg_not_allowed",
        "bad_signature",
        "bad_passcode",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("bsk_sidecar_rejections_total{")
                    && l.contains(&format!(r#"reason="{reason}""#))),
            "no rejection counted with reason {reason}:\n{metrics}"
        );
    }
}

fn urlenc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Status, headers (all but `date` and `x-request-id`, whose values vary) and the body with
/// its request id masked.
fn normalized(a: &Answer) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let id = a.header("x-request-id").unwrap().to_string();
    let mut headers: Vec<(String, String)> = a
        .headers
        .iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "date" | "x-request-id" => "<varies>".to_string(),
                _ => v.to_str().unwrap().to_string(),
            };
            (k.to_string(), v)
        })
        .collect();
    headers.sort();
    (a.status.as_u16(), headers, without_request_id(&a.body, &id))
}

#[tokio::test]
async fn admin_exports_metrics_without_addresses_or_user_ids() {
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(CONFIG, &app).await;
    let admin = sc.admin.expect("admin listener");
    let to = sc.addr;

    let a = send_from(LOCAL2, to, good_form(&sc, "/form"))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let good = aes_b64(SPEC_KEY, SPEC_IV, TICKET_PLAIN.as_bytes());
    let tampered = post(
        to,
        "/form",
        Some("application/x-www-form-urlencoded"),
        form_body("BSK", &flip(&good, -17)),
    );
    send_from(LOCAL3, to, tampered)
        .await
        .unwrap()
        .assert_error(400, "bad_envelope");
    let wrong_passcode = post(
        to,
        "/token",
        Some("application/json"),
        token_body("WRONG-PASSCODE", &hs256(&with_times(TICKET_PLAIN))),
    );
    send_from(LOCAL3, to, wrong_passcode)
        .await
        .unwrap()
        .assert_error(401, "bad_passcode");

    let m = admin_get(admin, "/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    let line = |prefix: &str, parts: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        line(
            "bsk_sidecar_requests_total{",
            &[
                r#"route="/form""#,
                r#"outcome="forwarded""#,
                r#"peer="bsk""#
            ]
        ),
        "{text}"
    );
    assert!(
        line(
            "bsk_sidecar_rejections_total{",
            &[r#"route="/form""#, r#"reason="bad_envelope""#]
        ),
        "{text}"
    );
    assert!(
        line(
            "bsk_sidecar_rejections_total{",
            &[r#"route="/token""#, r#"reason="bad_passcode""#]
        ),
        "{text}"
    );
    // (The numeric passcode is not searched for: float sums could contain any six digits.)
    for secret in [
        "127.0.0.",
        "8527419636",
        "20221202153322882",
        "WRONG-PASSCODE",
        JWT_SECRET,
        "eyJ",
    ] {
        assert!(!text.contains(secret), "metrics expose `{secret}`:\n{text}");
    }

    let h = admin_get(admin, "/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    let r = admin_get(admin, "/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_connections() {
    let app = Upstream::start(Behaviour::Gated).await;
    let mut sc = start(
        &CONFIG.replace("max_body: 4KiB,", "max_body: 4KiB, upstream_timeout: 5s,"),
        &app,
    )
    .await;
    let to = sc.addr;

    let in_flight = tokio::spawn(send_from(LOCAL, to, good_form(&sc, "/form")));
    app.wait_for(1).await;
    sc.trigger_shutdown();

    // The listener closes while the request is still with the application.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::net::TcpStream::connect(to).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // Caught in the backlog as the listener closed: not refused yet, look again.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "listener still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!in_flight.is_finished());

    app.release();
    let answer = in_flight
        .await
        .unwrap()
        .expect("in-flight request answered");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.body.as_ref(), TICKET_PLAIN.as_bytes());
    sc.join().await;
    let after = tokio::net::TcpStream::connect(to).await;
    assert!(after.is_err(), "connected after shutdown");
}

/// A 20 MiB document from the application, and a connection that asked for it (more than
/// the socket buffers hold, so most of it waits for the client to read).
async fn large_answer(config: &str) -> (Upstream, Sidecar, String, tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let big = format!(r#"{{"doc":"{}"}}"#, "A".repeat(20 * 1024 * 1024));
    let app = Upstream::start(Behaviour::Fixed {
        status: 200,
        content_type: "application/json",
        body: big.clone(),
    })
    .await;
    let sc = start(config, &app).await;
    let token = hs256(&with_times(TICKET_PLAIN));
    let body = token_body(PASSCODE, &token);
    let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    let head = format!(
        "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    (app, sc, big, s)
}

/// A client that reads a large answer slowly gets all of it: the connection is not
/// taken for idle (and parked or closed) while the answer is still being written.
#[tokio::test]
async fn a_slow_reader_gets_the_whole_of_a_large_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_app, sc, big, mut s) = large_answer(CONFIG).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // The first bytes; then, with most of the answer still unsent, the client reads
    // nothing until the sidecar has had time to take a quiet connection for idle: a second
    // connection, answered after the first, makes two requests and is parked by the
    // watchdog once it has been idle past the parking delay.
    let n = s.read(&mut buf).await.unwrap();
    got.extend_from_slice(&buf[..n]);
    let parked = || {
        (sc.rt.metrics.connections_parked)
            .with_label_values(&["public"])
            .get()
    };
    let mut clock = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    for _ in 0..2 {
        let get = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n";
        clock.write_all(get).await.unwrap();
        assert_eq!(read_answer(&mut clock).await.unwrap().status, 404);
    }
    eventually("the second connection parked by the watchdog", async || {
        parked() == 1
    })
    .await;
    let want = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a length");
            break end + 4 + len;
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    };
    while got.len() < want {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the answer stalled")
            .unwrap();
        assert!(n > 0, "closed after {} of {want} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.ends_with(big.as_bytes()));
}

/// A client that stops reading a large answer does not hold its connection for ever: once
/// it has read nothing for `keepalive_idle` (and `header_read_timeout`), the connection is
/// closed.
#[tokio::test]
async fn a_client_that_stops_reading_an_answer_is_cut_off() {
    let config = CONFIG.replace(
        "limits:\n",
        "limits:\n  keepalive_idle: 300ms\n  header_read_timeout: 300ms\n",
    );
    let (_app, sc, _big, s) = large_answer(&config).await;
    let open = || {
        (sc.rt.metrics.connections)
            .with_label_values(&["public"])
            .get()
    };
    // The answer is under way (the connection open) and the client reads none of it.
    eventually("the connection is open", async || open() == 1).await;
    eventually("the stalled connection is closed", async || open() == 0).await;
    drop(s);
}
