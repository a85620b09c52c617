//! `bsk-sidecar portal-sim`, the real binary: the sidecar's egress pushes API-2 and
//! API-6 to it and the simulator opens, verifies, answers and records them (`GET
//! /received`); `portal-sim call` drives the sidecar's ingress and checks the answers
//! against the spec's response tables. Everything on 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use http::Method;

use bsk_sidecar::portal_sim::{TEST_JWT_SECRET, TEST_PASSCODE};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsk-sidecar");

/// The simulator as a child process; its stdout lines arrive on `lines`.
struct Sim {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(BIN)
            .args(["portal-sim", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start portal-sim");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sim = Sim {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            lines,
            seen: Vec::new(),
        };
        let first = sim.wait_for("a stand-in BSK portal on http://");
        sim.addr = first.rsplit("http://").next().unwrap().parse().unwrap();
        sim
    }

    /// Waits (bounded) for a line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "portal-sim never printed {needle:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const EGRESS: &str = r#"
admin: { listen: "off" }
peers:
  bsk:
    agid: BSK
    passcode: "{PASSCODE}"
    jwt: { secret: "{SECRET}", sign_exp: 5m }
    url: http://{SIM}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /push/submission
        to: bsk
        remote: /push
        envelope: [token, jwt]
      - path: /user/auth
        to: bsk
        remote: /deo/auth
        envelope: [token, jwt]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn egress_pushes_are_verified_answered_and_recorded() {
    // The embedded test keys, as `portal-sim` with no key flags prints them.
    let mut sim = Sim::start(&["--require-exp"]);
    assert!(sim.wait_for("passcode: ").ends_with(TEST_PASSCODE));
    assert!(sim.wait_for("jwt_secret: ").ends_with(TEST_JWT_SECRET));
    let sc = Sidecar::start(
        EGRESS,
        &[
            ("{PASSCODE}", TEST_PASSCODE.to_string()),
            ("{SECRET}", TEST_JWT_SECRET.to_string()),
            ("{SIM}", sim.addr.to_string()),
        ],
    )
    .await;
    let json = Some("application/json");

    let push = r#"{"userid":9054233544,"ticketNo":20221202153322882,"serviceCode":"AMD/003","appNo":"123456","appSubTime":20221202160000,"paidAmt":200.00,"message":"Final Submitted","applicationStatus":3}"#;
    let a = send(sc.addr, post(sc.addr, "/push/submission", json, push)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // The answer was sealed (a token with iat/exp) and the sidecar opened it.
    let answer = a.json();
    assert_eq!(answer["appNo"], "123456", "{answer}");
    assert_eq!(answer["responseStatus"], "Success");
    assert_eq!(answer["statusCode"], 200);
    assert!(answer["exp"].as_u64().is_some(), "{answer}");
    sim.wait_for("verdict: accepted (opened with [token,jwt], matches the API-2 table)");
    let line = sim.wait_for("API-2 /push from 127.0.0.1");
    assert!(
        line.contains("appNo=123456") && line.contains("applicationStatus=3"),
        "{line}"
    );

    // applicationStatus 7 is not in API-2's table: refused with the field named.
    let bad = push.replace(r#""applicationStatus":3"#, r#""applicationStatus":7"#);
    let a = send(sc.addr, post(sc.addr, "/push/submission", json, bad)).await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["responseStatus"], "Failure");
    sim.wait_for("verdict: refused: applicationStatus");

    let auth = r#"{"userId":9054233544,"deptCode":"AMD","accessCode":7364443}"#;
    let a = send(sc.addr, post(sc.addr, "/user/auth", json, auth)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["userName"], "Charan Das");
    assert_eq!(a.json()["userId"], 9054233544u64);

    // A push sealed with another secret never passes for the department's.
    let mut wrong = sc.keys("bsk");
    wrong.jwt = Some(bsk_sidecar::envelope::jwt::JwtKey::new(
        bsk_sidecar::secret::Secret::new(b"not-the-portal-sims-secret-0123456789".to_vec()),
    ));
    let forged_wrong = seal(
        &[
            bsk_sidecar::envelope::Layer::Token,
            bsk_sidecar::envelope::Layer::Jwt,
        ],
        &wrong,
        with_times(push).as_bytes(),
        bsk_sidecar::envelope::BodyShape::Json,
    );
    let a = send(sim.addr, sealed_post(sim.addr, "/push", &forged_wrong)).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["reason"], "bad_signature");
    sim.wait_for("refused: bad_signature");

    let got = send(
        sim.addr,
        request(Method::GET, sim.addr, "/received")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    let got = got.json();
    let all = got.as_array().unwrap();
    assert_eq!(all.len(), 4, "{got:#}");
    assert_eq!(all[0]["api"], "api2");
    assert_eq!(all[0]["verdict"], "accepted");
    assert_eq!(all[0]["payload"]["appNo"], "123456");
    assert_eq!(all[0]["payload"]["ticketNo"], 20221202153322882u64);
    assert_eq!(all[1]["verdict"], "refused");
    assert_eq!(all[1]["problems"][0]["field"], "applicationStatus");
    assert_eq!(all[2]["api"], "api6");
    assert_eq!(all[2]["verdict"], "accepted");
    assert_eq!(all[3]["reason"], "bad_signature");
    assert_eq!(all[3]["payload"], serde_json::Value::Null);
}

const INGRESS: &str = r#"
admin: { listen: "off" }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt]
        schema: api3
        upstream: http://{STATUS}/status
      - path: /bsk/missed
        from: bsk
        envelope: [token, jwt]
        schema: api7
        upstream: http://{MISSED}/missed
        response: { mode: seal, wrap: { status: "S", statusCode: 200 } }
      - path: /bsk/otp
        from: bsk
        envelope: [token, jwt]
        upstream: http://{WRONG}/otp
"#;

async fn call(url: String, api: &str, secret: &str) -> Output {
    let args: Vec<String> = [
        "portal-sim",
        "call",
        &url,
        "--api",
        api,
        "--jwt-secret",
        secret,
        "--passcode",
        PASSCODE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output())
        .await
        .unwrap()
        .unwrap()
}

fn fixed(body: &str) -> Behaviour {
    Behaviour::Fixed {
        status: 200,
        content_type: "application/json",
        body: body.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn call_drives_the_sidecar_ingress_and_checks_the_response_table() {
    let status = Upstream::start(fixed(
        r#"{"userId":9054233544,"tokenNo":20220811050723,"applicationNo":"AP7373633/003","serviceName":"Seed Certificate","ServiceCode":"AMD/003","applicationStage":[{"responseTime":20220710052220,"message":"Successfully Submitted"}],"applicationStatus":4,"statusCode":200}"#,
    ))
    .await;
    let missed = Upstream::start(fixed(
        r#"[{"userid":9054233544,"ticketNo":20220811050723,"serviceCode":"AMD/003","appNo":"123456","appSubTime":20220811052025,"message":"Draft Submitted","applicationStatus":2,"statusCode":200}]"#,
    ))
    .await;
    let wrong = Upstream::start(fixed(r#"{"otpld":393747483}"#)).await;
    let sc = Sidecar::start(
        INGRESS,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{STATUS}", status.addr.to_string()),
            ("{MISSED}", missed.addr.to_string()),
            ("{WRONG}", wrong.addr.to_string()),
        ],
    )
    .await;
    let base = format!("http://{}", sc.addr);

    let out = call(format!("{base}/bsk/status"), "api3", JWT_SECRET).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("response table: matches the api3 response table"),
        "{text}"
    );
    // The application got the spec's example, opened, with a fresh tokenNo.
    let got: serde_json::Value = serde_json::from_slice(&status.only().body).unwrap();
    assert_eq!(got["applicationNo"], "AP7373633/003");
    assert!(got["tokenNo"].as_u64().unwrap() > 20220811050723);

    // API-7's answer comes back sealed in a wrap object: opened before the table check.
    let out = call(format!("{base}/bsk/missed"), "api7", JWT_SECRET).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("came back  200 (opened): [{"), "{text}");
    assert!(text.contains("matches the api7 response table"), "{text}");

    let out = call(format!("{base}/bsk/otp"), "api5", JWT_SECRET).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("does not match the api5a response table: missing otpGenStatus, statusCode"),
        "{text}"
    );

    let out = call(
        format!("{base}/bsk/status"),
        "api3",
        "a-secret-the-sidecar-does-not-know-0123",
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("came back  401 bad_signature"), "{text}");
    assert_eq!(status.count(), 1);

    // API-2 is the portal's own side: not something `call` sends.
    let out = call(format!("{base}/bsk/status"), "api2", JWT_SECRET).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("portal-sim calls api1, api3"));
}
