//! What deployed integrations really send, against the real sidecar: the section-15 API-1
//! sample through `schema: api1`; the API-7 missed-data pull as deployed department code
//! receives it (a form whose `encData` carries the passcode, lower-case dates, `limit` /
//! `offset` as strings) on a `[form, aes, passcode]` journal route; and its answer read the
//! way that code reads it (AES-CBC without padding removal, cut after the last `}` or `]`).

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use bsk_sidecar::calendar::unix_ms_to_ticket;
use bsk_sidecar::egress::journal::date_of_ticket;
use bsk_sidecar::envelope::{self, BodyShape, Layer};

use support::*;

const CONFIG: &str = r#"
admin: { listen: off }
state: { dir: "{STATE}" }
limits:
  per_ip_rate: { per_second: 1000, burst: 1000 }
peers:
{PEER_BSK}    url: "http://{NOWHERE}"
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/landing
        from: bsk
        envelope: [form, aes]
        schema: api1
        fresh: off                  # the section-15 sample's ticket is from 2022
        upstream: "http://{APP}/bsk/landing"
      - path: /bsk/landing-fresh
        from: bsk
        envelope: [form, aes]
        schema: api1
        fresh: 10m
        upstream: "http://{APP}/bsk/landing"
      - path: /bsk/missed-data
        from: bsk
        envelope: [form, aes, passcode]
        serve: journal
        fresh: off                  # an API-7 pull carries no fresh timestamp
        response: { mode: seal, wrap: { status: "S", statusCode: "200", statusDesc: "Data fetched successfully" } }
      - path: /bsk/missed-form
        from: bsk
        envelope: [form, aes, passcode]
        serve: journal
        fresh: off
        response: { mode: seal }
  - name: egress
    listen: 127.0.0.1:0
    routes:
      - path: /push
        to: bsk
        remote: /push
        envelope: [token, jwt]
        delivery: queued            # the portal stand-in is down: held, and journaled
"#;

struct Setup {
    sc: Sidecar,
    app: Upstream,
    _state: tempfile::TempDir,
}

async fn start() -> Setup {
    let app = Upstream::start(Behaviour::Echo).await;
    let state = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        CONFIG,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{APP}", app.addr.to_string()),
            ("{NOWHERE}", closed_port().await.to_string()),
            ("{STATE}", state.path().display().to_string()),
        ],
    )
    .await;
    Setup {
        sc,
        app,
        _state: state,
    }
}

/// A form body as a sender using the spec's own AES sample builds it: `encData` is the
/// standard AES-256-CBC + PKCS#7 of `plain`, nothing from the sidecar's sealing code.
fn deployed_form(
    sc: &Sidecar,
    path: &str,
    plain: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let enc = aes_b64(SPEC_KEY, SPEC_IV, plain.as_bytes());
    post(
        sc.addr,
        path,
        Some("application/x-www-form-urlencoded"),
        form_body("BSK", &enc),
    )
}

/// Reads a sealed answer the way the deployed .NET code does: AES-256-CBC with zero
/// padding (so nothing is removed: PKCS#7 bytes are not zeros), the bytes as UTF-8, cut
/// after the last `}` or `]`.
fn read_like_deployed_code(enc_data: &str) -> serde_json::Value {
    use cbc::cipher::block_padding::ZeroPadding;
    use cbc::cipher::{BlockDecryptMut, KeyIvInit};
    let mut buf = b64_decode(enc_data);
    let plain =
        cbc::Decryptor::<aes::Aes256>::new(SPEC_KEY.as_bytes().into(), SPEC_IV.as_bytes().into())
            .decrypt_padded_mut::<ZeroPadding>(&mut buf)
            .expect("whole blocks");
    let text = String::from_utf8_lossy(plain);
    let end = text.rfind(['}', ']']).expect("a closing bracket");
    serde_json::from_str(&text[..=end]).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// Strict PKCS#7 reading of a sealed answer, for comparison.
fn read_pkcs7(enc_data: &str) -> serde_json::Value {
    let key = envelope::aes::AesKey::new(SPEC_KEY.as_bytes(), SPEC_IV.as_bytes()).unwrap();
    let plain = envelope::aes::decrypt(&[key], enc_data, |_| true).expect("PKCS#7 answer");
    serde_json::from_slice(&plain).expect("JSON answer")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ------------------------------------------------------------------------- API-1

#[tokio::test]
async fn section_15_api1_sample_passes_schema_api1_byte_for_byte() {
    let s = start().await;
    // The spec's own form body: its published ciphertext of the section-15 plaintext.
    let req = post(
        s.sc.addr,
        "/bsk/landing",
        Some("application/x-www-form-urlencoded"),
        form_body("BSK", SPEC_CIPHER),
    );
    let a = send(s.sc.addr, req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(s.app.only().body, SPEC_PLAIN.as_bytes());
}

#[tokio::test]
async fn api1_deployed_shape_with_a_fresh_ticket_passes_freshness_and_schema() {
    let s = start().await;
    let ticket = unix_ms_to_ticket(now_ms());
    let plain = format!(
        r#"{{"userid":"8527419636","ticketno":"{ticket}","citizenmobile":"9963258963","citizenname":"Anupam Ghosh","citizenemail":"a.ghosh@example.in"}}"#
    );
    let a = send(
        s.sc.addr,
        deployed_form(&s.sc, "/bsk/landing-fresh", &plain),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(s.app.only().body, plain.as_bytes());
    // The same ticket again is a replay, `ticketno` spelling and all.
    let again = send(
        s.sc.addr,
        deployed_form(&s.sc, "/bsk/landing-fresh", &plain),
    )
    .await;
    again.assert_error(409, "replayed");
    assert_eq!(s.app.count(), 1);
}

#[tokio::test]
async fn api1_fields_present_are_still_checked_and_non_ascii_cannot_panic() {
    let s = start().await;
    for service_code in ["ÀÀÀ", "ZZZ001", "বাংলা"] {
        let plain = format!(
            r#"{{"userid":"8527419636","ticketno":"20221202153322882","serviceCode":"{service_code}","citizenname":"Anupam Ghosh"}}"#
        );
        let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/landing", &plain)).await;
        let v = a.assert_error(400, "schema_violation");
        assert!(v.to_string().contains("serviceCode"), "{v}");
    }
    // Without the identity of the service entry: refused.
    let a = send(
        s.sc.addr,
        deployed_form(
            &s.sc,
            "/bsk/landing",
            r#"{"userid":"8527419636","citizenname":"Anupam Ghosh"}"#,
        ),
    )
    .await;
    let v = a.assert_error(400, "schema_violation");
    assert!(v.to_string().contains("ticketNo"), "{v}");
    assert_eq!(s.app.count(), 0);
    // The listener still answers: no request task died.
    let ok = send(
        s.sc.addr,
        post(
            s.sc.addr,
            "/bsk/landing",
            Some("application/x-www-form-urlencoded"),
            form_body("BSK", SPEC_CIPHER),
        ),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

// ------------------------------------------------------------------------- API-7

/// Pushes two API-2 records (with citizen data) for each of the last four IST days through
/// the egress listener; returns `(date, ticket)` in the journal's order.
async fn fill_journal(sc: &Sidecar) -> Vec<(String, String)> {
    let egress = sc.listener("egress");
    let now = now_ms();
    let mut pushed = Vec::new();
    for day in (0..4i64).rev() {
        for n in 0..2i64 {
            let ticket = unix_ms_to_ticket(now - day * 86_400_000 - 60_000 * (n + 1));
            let body = format!(
                r#"{{"userid":9054233544,"ticketNo":{ticket},"serviceCode":"AMD/003","appNo":"A-{day}{n}","appSubTime":{},"paidAmt":200.00,"message":"Draft Submitted","applicationStatus":2,"statusCode":200,"citizenname":"Anupam Ghosh","citizenmobile":"9963258963","citizenemail":"a.ghosh@example.in"}}"#,
                &ticket[..14]
            );
            let a = send(
                egress,
                post(egress, "/push", Some("application/json"), body),
            )
            .await;
            assert_eq!(a.status, 202, "{}", a.text());
            pushed.push((date_of_ticket(&ticket).unwrap(), ticket));
        }
    }
    // The journal answers by date, then in the order the pushes arrived.
    pushed.sort_by(|a, b| a.0.cmp(&b.0));
    pushed
}

fn tickets_of(records: &serde_json::Value) -> Vec<String> {
    records
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|r| {
            for personal in ["citizenname", "citizenmobile", "citizenemail"] {
                assert!(r.get(personal).is_none(), "{r}");
            }
            r["ticketNo"].to_string()
        })
        .collect()
}

fn pull_json(passcode: Option<&str>, extra: &str) -> String {
    let passcode = passcode
        .map(|p| format!(r#""passcode": {p}, "#))
        .unwrap_or_default();
    format!("{{{passcode}{extra}}}")
}

#[tokio::test]
async fn api7_pull_with_the_passcode_inside_the_ciphertext() {
    let s = start().await;
    let pushed = fill_journal(&s.sc).await;
    let dates: Vec<&str> = {
        let mut d: Vec<&str> = pushed.iter().map(|(d, _)| d.as_str()).collect();
        d.dedup();
        d
    };
    assert!(dates.len() >= 4, "{dates:?}");
    let want = |from: &str, to: &str| -> Vec<String> {
        pushed
            .iter()
            .filter(|(d, _)| d.as_str() >= from && d.as_str() <= to)
            .map(|(_, t)| t.clone())
            .collect()
    };
    let (first, last) = (dates[0], dates[dates.len() - 1]);

    // The deployed request: string passcode, lower-case dates, numbers for paging.
    let body = pull_json(
        Some(r#""376423""#),
        &format!(
            r#""fromdate": "{}", "todate": "{}", "limit": 100, "offset": 0"#,
            dates[1], dates[2]
        ),
    );
    let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/missed-data", &body)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"));
    let v = a.json();
    // The wrap the deployed reader expects: statusCode as the string "200".
    assert_eq!(v["status"], "S");
    assert_eq!(v["statusCode"], "200");
    assert_eq!(v["statusDesc"], "Data fetched successfully");
    let enc = v["encData"].as_str().expect("encData");
    let records = read_like_deployed_code(enc);
    assert_eq!(records, read_pkcs7(enc));
    assert_eq!(tickets_of(&records), want(dates[1], dates[2]));

    // limit and offset as digit strings, and the spec's own spellings of the dates.
    let body = pull_json(
        Some(r#""376423""#),
        &format!(r#""fromDate": "{first}", "toDate": "{last}", "limit": "3", "offset": "2""#),
    );
    let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/missed-data", &body)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let records = read_like_deployed_code(a.json()["encData"].as_str().unwrap());
    assert_eq!(tickets_of(&records), want(first, last)[2..5]);
    for spelling in [
        ("formDate", "toDate"),
        ("From Date", "To Date"),
        ("From_Date", "To_Date"),
    ] {
        let body = pull_json(
            Some(r#""376423""#),
            &format!(r#""{}": "{first}", "{}": "{last}""#, spelling.0, spelling.1),
        );
        let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/missed-data", &body)).await;
        assert_eq!(a.status, 200, "{spelling:?}: {}", a.text());
        let records = read_like_deployed_code(a.json()["encData"].as_str().unwrap());
        assert_eq!(tickets_of(&records), want(first, last), "{spelling:?}");
    }
    // A passcode sent as a JSON number is compared by its exact characters.
    let body = pull_json(
        Some("376423"),
        &format!(r#""fromdate": "{first}", "todate": "{first}""#),
    );
    let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/missed-data", &body)).await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn api7_pull_with_a_wrong_or_missing_inner_passcode_returns_nothing() {
    let s = start().await;
    let pushed = fill_journal(&s.sc).await;
    let (first, last) = (&pushed[0].0, &pushed[pushed.len() - 1].0);
    let dates = format!(r#""fromdate": "{first}", "todate": "{last}", "limit": 100, "offset": 0"#);
    for passcode in [
        Some(r#""000000""#),
        Some(r#""37642""#),
        Some(r#""376423 ""#),
        Some("376423.0"),
        Some("null"),
        None,
    ] {
        for path in ["/bsk/missed-data", "/bsk/missed-form"] {
            let body = pull_json(passcode, &dates);
            let a = send(s.sc.addr, deployed_form(&s.sc, path, &body)).await;
            a.assert_error(401, "bad_passcode");
            let text = a.text();
            assert!(!text.contains("encData"), "{path} {passcode:?}: {text}");
            for (_, ticket) in &pushed {
                assert!(
                    !text.contains(ticket.as_str()),
                    "{path} {passcode:?}: {text}"
                );
            }
        }
    }
    // A second `passcode` cannot override the first: a repeated key never gets past the
    // payload validator (inside AES, one more undecryptable envelope).
    let body = format!(r#"{{"passcode": "000000", "passcode": "376423", {dates}}}"#);
    let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/missed-data", &body)).await;
    a.assert_error(400, "bad_envelope");
    // The right passcode on the same routes: the records come back.
    let body = pull_json(Some(r#""376423""#), &dates);
    let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/missed-data", &body)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let records = read_like_deployed_code(a.json()["encData"].as_str().unwrap());
    assert_eq!(records.as_array().unwrap().len(), pushed.len());
}

#[tokio::test]
async fn api7_form_answer_reads_with_the_deployed_zero_padding_reader() {
    let s = start().await;
    let pushed = fill_journal(&s.sc).await;
    let (first, last) = (&pushed[0].0, &pushed[pushed.len() - 1].0);
    for limit in 1..=pushed.len() {
        let body = pull_json(
            Some(r#""376423""#),
            &format!(r#""fromdate": "{first}", "todate": "{last}", "limit": "{limit}""#),
        );
        let a = send(s.sc.addr, deployed_form(&s.sc, "/bsk/missed-form", &body)).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(
            a.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let fields: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&a.body).into_owned().collect();
        assert_eq!(fields["agId"], "BSK");
        let records = read_like_deployed_code(&fields["encData"]);
        assert_eq!(records, read_pkcs7(&fields["encData"]));
        let want: Vec<String> = pushed.iter().take(limit).map(|(_, t)| t.clone()).collect();
        assert_eq!(tickets_of(&records), want);
    }
}

/// Every PKCS#7 padding length (1 to 16 bytes, a whole block when the JSON fills its
/// last block), objects and arrays: the deployed reader gets the JSON back exactly.
#[test]
fn sealed_answers_of_every_length_read_with_zero_padding_semantics() {
    let keys = envelope::PeerKeys {
        agid: "BSK".into(),
        passcode: None,
        jwt: None,
        aes: vec![envelope::aes::AesKey::new(SPEC_KEY.as_bytes(), SPEC_IV.as_bytes()).unwrap()],
    };
    for n in 0..=48 {
        for json in [
            format!(r#"{{"statusDesc":"{}"}}"#, "x".repeat(n)),
            format!(
                r#"[{{"ticketNo":20221202153322882,"message":"{}"}}]"#,
                "ক".repeat(n)
            ),
        ] {
            let sealed =
                envelope::seal(&[Layer::Aes], &keys, json.as_bytes(), BodyShape::Json).unwrap();
            let enc = String::from_utf8(sealed.body).unwrap();
            let want: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(read_like_deployed_code(&enc), want, "{json}");
        }
    }
}
