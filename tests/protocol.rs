//! Freshness, replay (including across a restart of the sidecar process), JSON bounds
//! and payload schemas, end to end.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bsk_sidecar::calendar::unix_ms_to_ticket;
use bsk_sidecar::envelope::{BodyShape, Layer, PeerKeys};
use bytes::Bytes;
use http::{header, Method};
use http_body_util::Full;
use support::*;

fn ticket_at(offset_secs: i64) -> String {
    unix_ms_to_ticket((unix_now() + offset_secs) * 1000)
}

fn api1(ticket: &str) -> String {
    format!(
        r#"{{"userid":9054233544,"ticketNo":{ticket},"serviceCode":"AMD/003","name":"Arindam Ray"}}"#
    )
}

fn routes(state: &str) -> String {
    format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: "{state}" }}
peers:{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/landing
        from: bsk
        envelope: [form, aes]
        ip_check: false
        schema: api1
        upstream: http://APP/bsk/landing
      - path: /bsk/landing-nofresh
        from: bsk
        envelope: [form, aes]
        ip_check: false
        fresh: "off"
        upstream: http://APP/bsk/landing
      - path: /bsk/push
        from: bsk
        envelope: [token, jwt]
        schema: api2
        upstream: http://APP/bsk/push
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt]
        schema: api3
        upstream: http://APP/bsk/status
      - path: /bsk/status-warn
        from: bsk
        envelope: [token, jwt]
        schema: api3
        schema_mode: warn
        upstream: http://APP/bsk/status
"#
    )
}

async fn start(state: &str, app: &Upstream) -> Sidecar {
    Sidecar::start(&routes(state), &[("APP", app.addr.to_string())]).await
}

fn form(keys: &PeerKeys, plain: &str) -> bsk_sidecar::envelope::Sealed {
    seal(
        &[Layer::Form, Layer::Aes],
        keys,
        plain.as_bytes(),
        BodyShape::Form,
    )
}

fn token(keys: &PeerKeys, plain: &str) -> bsk_sidecar::envelope::Sealed {
    seal(
        &[Layer::Token, Layer::Jwt],
        keys,
        with_times(plain).as_bytes(),
        BodyShape::Json,
    )
}

#[tokio::test]
async fn api1_is_accepted_once_and_a_replay_is_409() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(state.path().to_str().unwrap(), &app).await;
    let keys = sc.keys("bsk");
    let ticket = ticket_at(0);
    let req = form(&keys, &api1(&ticket));
    assert_eq!(
        send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &req))
            .await
            .status,
        200
    );
    let again = send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &req)).await;
    let body = again.assert_error(409, "replayed");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("already accepted"));
    // The same (userid, ticketNo) with other content is still the same request.
    let altered = form(&keys, &api1(&ticket).replace("Arindam Ray", "Someone Else"));
    send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &altered))
        .await
        .assert_error(409, "replayed");
    assert_eq!(app.count(), 1, "a replay reached the application");
    // A new ticket is a new request.
    let next = form(&keys, &api1(&ticket_at(1)));
    assert_eq!(
        send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &next))
            .await
            .status,
        200
    );
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn stale_and_future_dated_tickets_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(state.path().to_str().unwrap(), &app).await;
    let keys = sc.keys("bsk");
    let cases = [
        (ticket_at(-11 * 60), "stale"),
        (ticket_at(5 * 60), "future_dated"),
        ("20220811130723".to_string(), "stale"),
    ];
    for (ticket, reason) in cases {
        let req = form(&keys, &api1(&ticket));
        send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &req))
            .await
            .assert_error(400, reason);
    }
    // No timestamp at all on a fresh route.
    let req = form(&keys, r#"{"userid":9054233544,"serviceCode":"AMD/003"}"#);
    send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &req))
        .await
        .assert_error(400, "missing_timestamp");
    assert_eq!(app.count(), 0);
    // `fresh: off` relaxes it explicitly.
    let req = form(&keys, &api1("20220811130723"));
    assert_eq!(
        send(sc.addr, sealed_post(sc.addr, "/bsk/landing-nofresh", &req))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn api2_draft_and_final_of_one_ticket_are_distinct_but_each_only_once() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(state.path().to_str().unwrap(), &app).await;
    let keys = sc.keys("bsk");
    // The ticket is days old (the draft was started then); appSubTime is now.
    let push = |status: u8| {
        format!(
            r#"{{"userid":9054233544,"ticketNo":20220811050723,"serviceCode":"AMD/003","appNo":"123456","appSubTime":{},"applicationStatus":{status}}}"#,
            &ticket_at(0)[..14]
        )
    };
    for status in [2, 3] {
        let req = token(&keys, &push(status));
        assert_eq!(
            send(sc.addr, sealed_post(sc.addr, "/bsk/push", &req))
                .await
                .status,
            200,
            "status {status}"
        );
    }
    let again = token(&keys, &push(3));
    send(sc.addr, sealed_post(sc.addr, "/bsk/push", &again))
        .await
        .assert_error(409, "replayed");
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn schema_enforce_refuses_with_the_fields_and_warn_forwards() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(state.path().to_str().unwrap(), &app).await;
    let keys = sc.keys("bsk");
    let good = r#"{"userId":9054233544,"tokenNo":20220811050723,"serviceCode":"AMD/003","applicationNo":"AP7373633/003"}"#;
    let bad = r#"{"userid":12345,"ticketNo":20220811050723,"serviceCode":"XYZ/003"}"#;
    let ok = send(
        sc.addr,
        sealed_post(sc.addr, "/bsk/status", &token(&keys, good)),
    )
    .await;
    assert_eq!(ok.status, 200);
    let refused = send(
        sc.addr,
        sealed_post(sc.addr, "/bsk/status", &token(&keys, bad)),
    )
    .await;
    let body = refused.assert_error(400, "schema_violation");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["userid", "serviceCode", "applicationNo"]);
    assert_eq!(app.count(), 1);
    // Warn mode forwards the same payload, unchanged.
    let sealed = token(&keys, bad);
    let warned = send(sc.addr, sealed_post(sc.addr, "/bsk/status-warn", &sealed)).await;
    assert_eq!(warned.status, 200);
    assert_eq!(app.count(), 2);
    assert!(std::str::from_utf8(&app.recorded()[1].body)
        .unwrap()
        .contains(r#""userid":12345"#));
}

#[tokio::test]
async fn json_bombs_are_refused_before_the_application() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(state.path().to_str().unwrap(), &app).await;
    let keys = sc.keys("bsk");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let wide = format!("[{}0]", "0,".repeat(20_000));
    // Inside AES a bomb is one more undecryptable envelope: CBC is malleable, so any
    // distinct answer about a plaintext would be an oracle.
    for bomb in [deep, wide] {
        let req = form(&keys, &bomb);
        send(sc.addr, sealed_post(sc.addr, "/bsk/landing-nofresh", &req))
            .await
            .assert_error(400, "bad_envelope");
    }
    assert_eq!(app.count(), 0);
}

// ---------------------------------------------------------------------------------------
// Across a restart of the real process.

struct Process {
    child: Child,
    addr: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

fn spawn(config: &std::path::Path) -> Process {
    let (child, addr, log) = spawn_sidecar_logging(config);
    Process { child, addr, log }
}

impl Process {
    /// The next log line that holds every one of `parts`, while the process runs.
    fn line_with(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if parts.iter().all(|p| line.contains(p)) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {parts:?}: {e}"),
            }
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The routes' config for a real process in front of `app`, written in `dir`, and the
/// `bsk` peer's keys.
fn process_config(dir: &std::path::Path, app: &Upstream) -> (std::path::PathBuf, PeerKeys) {
    let config = dir.join("sidecar.yaml");
    let yaml = routes(dir.join("state").to_str().unwrap()).replace("APP", &app.addr.to_string());
    std::fs::write(&config, yaml).unwrap();
    let keys = bsk_sidecar::config::load(&config).unwrap().peers["bsk"]
        .keys
        .clone();
    (config, keys)
}

#[tokio::test]
async fn a_replay_is_refused_after_the_process_restarts() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let (config, keys) = process_config(state.path(), &app);
    let req = form(&keys, &api1(&ticket_at(0)));

    let first = spawn(&config);
    assert_eq!(
        send(first.addr, sealed_post(first.addr, "/bsk/landing", &req))
            .await
            .status,
        200
    );
    first.stop();

    let second = spawn(&config);
    send(second.addr, sealed_post(second.addr, "/bsk/landing", &req))
        .await
        .assert_error(409, "replayed");
    let fresh = form(&keys, &api1(&ticket_at(1)));
    assert_eq!(
        send(
            second.addr,
            sealed_post(second.addr, "/bsk/landing", &fresh)
        )
        .await
        .status,
        200
    );
    second.stop();
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn each_request_is_in_the_log_while_the_process_runs() {
    // The connection workers hand their lines to the log together when they have nothing
    // left to run: an idle sidecar's lines must still appear at once, not at the exit.
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let (config, keys) = process_config(state.path(), &app);
    let sc = spawn(&config);
    for n in 0..2 {
        let req = form(&keys, &api1(&ticket_at(n)));
        let answer = send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &req)).await;
        assert_eq!(answer.status, 200);
        let line = sc.line_with(&["forwarded", "listener=public", "status=200"]);
        assert!(line.contains(r#"route="/bsk/landing""#), "{line}");
    }
    let refused = send(
        sc.addr,
        request(Method::POST, sc.addr, "/bsk/landing")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"encData=AAAA")))
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 400);
    let id = refused.headers["x-request-id"].to_str().unwrap();
    let line = sc.line_with(&["rejected", &format!("request_id={id}")]);
    assert!(line.contains("status=400"), "{line}");
    sc.stop();
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn json_access_lines_carry_each_field_as_its_own_key() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let (config, keys) = process_config(state.path(), &app);
    let (child, addr, log) = spawn_sidecar_logging_as(&config, "json");
    let sc = Process { child, addr, log };
    let req = form(&keys, &api1(&ticket_at(0)));
    let answer = send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &req)).await;
    assert_eq!(answer.status, 200);
    let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    let line = sc.line_with(&[r#""message":"forwarded""#, &id]);
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&line).expect("one JSON object a line");
    // Every key once, in the order the event names them.
    let order = [
        "timestamp",
        "level",
        "message",
        "request_id",
        "listener",
        "route",
        "peer",
        "status",
        "upstream_status",
        "latency_ms",
        "userid",
        "ticket_no",
        "target",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|k| {
            let key = format!("\"{k}\":");
            assert_eq!(line.matches(&key).count(), 1, "{k}: {line}");
            line.find(&key).unwrap()
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
    assert_eq!(fields.len(), order.len(), "{line}");
    assert_eq!(fields["request_id"], id.as_str());
    assert_eq!(fields["listener"], "public");
    assert_eq!(fields["route"], "/bsk/landing");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["upstream_status"], 200);
    assert_eq!(fields["target"], "bsk_sidecar::access");
    assert!(
        fields["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    sc.stop();
    assert_eq!(app.count(), 1);
}

// ---------------------------------------------------------------------------------------
// What real integrations send: each accepted, arriving at the application unchanged.

#[tokio::test]
async fn real_world_encodings_are_accepted_and_forwarded_unchanged() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let sc = start(state.path().to_str().unwrap(), &app).await;
    // A string userid with a stray CR LF, the lower-case `ticketno`, `ServiceCode`; the
    // filler field varies until the base64 holds a `+` and `=` padding (the cases under test).
    let ticket = ticket_at(0);
    let (plain, b64) = (0..200)
        .map(|n| {
            let plain = format!(
                "{{\"userid\":\"9054233544\\r\\n\",\"ticketno\":\"{ticket} \",\"ServiceCode\":\"AMD001\",\"name\":\"অনুপম ঘোষ\",\"filler\":\"{}\"}}",
                "x".repeat(n)
            );
            let b64 = aes_b64(SPEC_KEY, SPEC_IV, plain.as_bytes());
            (plain, b64)
        })
        .find(|(_, b64)| b64.contains('+') && b64.ends_with('='))
        .expect("some filler gives a `+` and `=` padding");
    let unpadded = b64.trim_end_matches('=').to_string();
    let mime: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n");
    let unencoded_plus = format!("agId=BSK&encData={b64}");
    let bodies: Vec<(&str, &str, String)> = vec![
        (
            "padding stripped",
            "application/x-www-form-urlencoded",
            form_body(&unpadded),
        ),
        (
            "MIME line breaks",
            "application/x-www-form-urlencoded",
            form_body(&mime),
        ),
        (
            "`+` not percent-encoded",
            "application/x-www-form-urlencoded",
            unencoded_plus,
        ),
        (
            "JSON body",
            "application/json",
            format!(r#"{{"agId":"BSK","encData":"{b64}"}}"#),
        ),
    ];
    for (name, ct, body) in bodies {
        let answer = send(
            sc.addr,
            post(sc.addr, "/bsk/landing-nofresh", Some(ct), body),
        )
        .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.text());
    }
    let recorded = app.recorded();
    assert_eq!(recorded.len(), 4);
    for r in recorded {
        assert_eq!(r.body, plain.as_bytes(), "payload rewritten");
    }
}

fn form_body(enc: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("agId", "BSK")
        .append_pair("encData", enc)
        .finish()
}

#[tokio::test]
async fn the_replay_cache_is_shared_by_every_listener() {
    let state = tempfile::tempdir().unwrap();
    let app = Upstream::start(Behaviour::Echo).await;
    let yaml = routes(state.path().to_str().unwrap())
        + r#"  - name: second
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/landing
        from: bsk
        envelope: [form, aes]
        ip_check: false
        schema: api1
        upstream: http://APP/bsk/landing
"#;
    let sc = Sidecar::start(&yaml, &[("APP", app.addr.to_string())]).await;
    let keys = sc.keys("bsk");
    let req = form(&keys, &api1(&ticket_at(0)));
    assert_eq!(
        send(sc.addr, sealed_post(sc.addr, "/bsk/landing", &req))
            .await
            .status,
        200
    );
    let second = sc.listener("second");
    send(second, sealed_post(second, "/bsk/landing", &req))
        .await
        .assert_error(409, "replayed");
    assert_eq!(app.count(), 1);
}
