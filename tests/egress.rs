//! Egress with the real binary: the application's plain JSON sealed for an HTTPS peer
//! (a CA made at test time), its sealed answer opened; pushes held through a peer outage
//! and through `kill -9`, delivered once each; API-7 answered from the journal; the
//! operator's `outbox` commands; a client certificate and the outbound rate limit; a
//! corrupt store refusing to start.
//!
//! Each test prints a `FIGURES` line (pushes made, delivered, duplicates, lost).

mod egress_support;

use std::collections::HashMap;
use std::path::Path;

use egress_support::*;

fn write_config(dir: &Path, peer: &RemotePeer, pki: &Pki) -> std::path::PathBuf {
    let cfg = dir.join("sidecar.yaml");
    let state = dir.join("state");
    std::fs::write(&cfg, config(&peer.url(), &pki.ca_file(), &state)).unwrap();
    cfg
}

fn figures(name: &str, made: usize, received: &[Received]) {
    let ts = tickets(received);
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for t in &ts {
        *counts.entry(t).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let delivered = counts.len();
    eprintln!(
        "FIGURES {name}: pushes made {made}, delivered {delivered}, duplicates {duplicates}, lost {}",
        made.saturating_sub(delivered)
    );
}

fn count_of(received: &[Received], ticket: &str) -> usize {
    tickets(received).iter().filter(|t| *t == ticket).count()
}

/// `ticketNo/applicationStatus` of a push.
fn ticket_of(json: &str) -> String {
    key_of(&serde_json::from_str(json).unwrap())
}

/// `bsk_sidecar_outbox_attempts_total{outcome="retry"}` from the admin listener.
async fn retries(sc: &Sidecar) -> u64 {
    let (_, _, m) = request(sc.admin, "GET", "/metrics", "text/plain", Vec::new()).await;
    String::from_utf8_lossy(&m)
        .lines()
        .filter(|l| {
            l.starts_with("bsk_sidecar_outbox_attempts_total{") && l.contains(r#"outcome="retry""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_push_is_sealed_over_tls_and_the_sealed_reply_opened() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::up(&pki).await;
    let cfg = write_config(dir.path(), &peer, &pki);
    let sc = Sidecar::start(&cfg);

    // API-6 style call: plain JSON in, the peer's sealed answer opened for the app.
    let body = r#"{"userId":9054233544,"deptCode":"AMD","accessCode":7364443,"ticketNo":20221202153322882,"appNo":"X-1"}"#;
    let (status, v) = push(&sc, "/api6", body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["responseStatus"], "Success");
    assert_eq!(v["appNo"], "X-1");
    // The peer opened exactly the application's bytes (17-digit ticket intact), and the
    // token carried `exp` (the peer requires it: `jwt.sign_exp`).
    let got = peer.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/api/auth");
    let signed: serde_json::Value = serde_json::from_slice(&got[0].plain).unwrap();
    assert!(String::from_utf8_lossy(&got[0].plain).starts_with(&body[..body.len() - 1]));
    assert!(signed["exp"].as_u64().unwrap() > unix_now());

    // Not JSON: refused before anything is sealed.
    let (status, _, b) = request(
        sc.egress(),
        "POST",
        "/api6",
        "application/json",
        b"{oops".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&b));

    // The peer is slow: 504 JSON; the peer is down: 502 JSON.
    peer.set_answer(Answer::Slow(std::time::Duration::from_millis(1500)));
    let (status, v) = push(&sc, "/api6", body).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (504, Some("peer_timeout")),
        "{v}"
    );
    peer.set_answer(Answer::SealedOk);
    peer.stop().await;
    let (status, v) = push(&sc, "/api6", body).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (502, Some("peer_unavailable")),
        "{v}"
    );
    assert!(v["requestId"].is_string());

    // A peer whose certificate the configured CA did not issue is never talked to.
    let other = Pki::new();
    let mut impostor = RemotePeer::down(&other).await;
    let cfg2 = dir.path().join("impostor.yaml");
    let state2 = dir.path().join("state2");
    std::fs::write(&cfg2, config(&impostor.url(), &pki.ca_file(), &state2)).unwrap();
    impostor.start().await;
    let sc2 = Sidecar::start(&cfg2);
    let (status, v) = push(&sc2, "/api6", body).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (502, Some("peer_unavailable")),
        "{v}"
    );
    assert!(impostor.received().is_empty());
    figures("direct", 1, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_made_while_the_peer_is_down_are_all_delivered_once_it_returns() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::down(&pki).await;
    let cfg = write_config(dir.path(), &peer, &pki);
    let sc = Sidecar::start(&cfg);

    // 12 queued and 12 fallback pushes while the peer is down, interleaved.
    let mut made = Vec::new();
    let mut ids = HashMap::new();
    for n in 0..24u32 {
        let route = if n % 2 == 0 {
            "/push/queued"
        } else {
            "/push/fallback"
        };
        let body = api2(n, "20221210", 2);
        let (status, v) = push(&sc, route, &body).await;
        assert_eq!(status, 202, "{route}: {v}");
        assert_eq!(v["statusCode"], 202);
        assert_eq!(v["message"], "Queued");
        ids.insert(ticket_of(&body), v["id"].as_str().unwrap().to_string());
        made.push(body);
    }
    // The application retries some of them (it never got an answer, say): same id, no copy.
    for body in made.iter().take(6) {
        for route in ["/push/queued", "/push/fallback"] {
            let (status, v) = push(&sc, route, body).await;
            assert_eq!(status, 202, "{v}");
            assert_eq!(v["id"].as_str(), Some(ids[&ticket_of(body)].as_str()));
        }
    }
    // A draft and the final submission of one ticket are two pushes.
    let fin = made[0].replace(r#""applicationStatus":2"#, r#""applicationStatus":3"#);
    let (status, _) = push(&sc, "/push/queued", &fin).await;
    assert_eq!(status, 202);

    let listed = outbox(&sc).await;
    assert_eq!(listed["queued"].as_array().unwrap().len(), 25, "{listed}");
    assert!(
        !listed.to_string().contains("Anupam"),
        "bodies never listed"
    );
    // The CLI reaches the running sidecar through its admin listener.
    let (ok, out, err) = cli(&["outbox", "list", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("25 push(es)"), "{out}");

    // The delivery task keeps trying (with backoff) while the peer stays down.
    let deadline = std::time::Instant::now() + PATIENCE;
    while retries(&sc).await < 5 {
        assert!(std::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(outbox(&sc).await["queued"].as_array().unwrap().len(), 25);

    // A push older than its route's max_age is dead-lettered even behind older ones;
    // the operator drops it (through the running sidecar's admin listener).
    let stale = api2(90, "20221210", 2);
    let (status, v) = push(&sc, "/push/short", &stale).await;
    assert_eq!(status, 202, "{v}");
    let stale_id = v["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let listed = outbox(&sc).await;
        let dead = listed["dead"].as_array().unwrap();
        if let Some(d) = dead.first() {
            assert_eq!(d["dead_reason"], "max_age", "{listed}");
            assert_eq!(d["id"].to_string(), stale_id);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never expired: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let config = cfg.to_str().unwrap();
    let (ok, out, err) = cli(&["outbox", "drop", &stale_id, "--config", config]);
    assert!(ok, "{out} {err}");
    assert!(outbox(&sc).await["dead"].as_array().unwrap().is_empty());

    // The peer comes back: everything is delivered, in the order it was accepted.
    peer.start().await;
    peer.wait_for(25).await;
    wait_outbox_empty(&sc).await;
    let got = peer.received();
    assert_eq!(got.len(), 25, "{:?}", tickets(&got));
    let mut expected: Vec<String> = made.iter().map(|b| ticket_of(b)).collect();
    expected.insert(24, ticket_of(&fin));
    assert_eq!(tickets(&got), expected, "in order per peer");
    assert_eq!(
        count_of(&got, &ticket_of(&stale)),
        0,
        "expired and dropped: never sent"
    );
    for t in &expected {
        assert_eq!(count_of(&got, t), 1, "{t}");
    }
    // Each push byte for byte as the application sent it (plus the signed exp/iat).
    let first: serde_json::Value = serde_json::from_slice(&got[0].plain).unwrap();
    assert_eq!(first["citizenname"], "Anupam Ghosh");

    // With the peer up, a fallback push is delivered at once and the sealed reply opened.
    let now_body = api2(50, "20221211", 2);
    let (status, v) = push(&sc, "/push/fallback", &now_body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["responseStatus"], "Success");
    // ... and sent again by the application, it is answered from the record, not resent.
    let (status, v) = push(&sc, "/push/fallback", &now_body).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (200, Some("Already delivered")),
        "{v}"
    );
    let (status, v) = push(&sc, "/push/queued", &made[3]).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (200, Some("Already delivered")),
        "{v}"
    );
    assert_eq!(peer.received().len(), 26);

    // A push the peer refuses for good goes to the dead-letter list without holding the
    // queue; the operator retries it once the peer accepts it.
    let poison = api2(60, "20221211", 2);
    peer.refuse_ticket(&ticket_of(&poison));
    let (status, _) = push(&sc, "/push/queued", &poison).await;
    assert_eq!(status, 202);
    let after = api2(61, "20221211", 2);
    push(&sc, "/push/queued", &after).await;
    peer.wait_for(27).await;
    wait_outbox_empty(&sc).await;
    let listed = outbox(&sc).await;
    let dead = listed["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{listed}");
    let dead_id = dead[0]["id"].to_string();
    peer.accept_all();
    let (ok, out, err) = cli(&[
        "outbox",
        "retry",
        &dead_id,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(ok, "{out} {err}");
    peer.wait_for(28).await;
    wait_outbox_empty(&sc).await;
    assert!(outbox(&sc).await["dead"].as_array().unwrap().is_empty());

    // Metrics: depth back to 0, deliveries and the dead letter counted.
    let deadline = std::time::Instant::now() + PATIENCE;
    let m = loop {
        let (_, _, m) = request(sc.admin, "GET", "/metrics", "text/plain", Vec::new()).await;
        let m = String::from_utf8_lossy(&m).into_owned();
        if m.contains(r#"bsk_sidecar_outbox_queue_depth{peer="bsk"} 0"#) {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        m.contains(r#"bsk_sidecar_outbox_dead_letters_total{peer="bsk",reason="rejected"} 1"#),
        "{m}"
    );
    assert!(m.contains("bsk_sidecar_outbox_deliveries_total"), "{m}");
    assert!(m.contains("bsk_sidecar_outbox_oldest_age_seconds"), "{m}");

    let got = peer.received();
    let all = tickets(&got);
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(all.len(), unique.len(), "no push delivered twice: {all:?}");
    figures("outage (25 while down + 3 after)", 28, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_pushes_survive_sigkill_and_are_delivered_after_restart() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::down(&pki).await;
    let cfg = write_config(dir.path(), &peer, &pki);
    let sc = Sidecar::start(&cfg);
    let mut made = Vec::new();
    for n in 0..20u32 {
        let body = api2(n, "20221215", 3);
        let route = if n % 4 == 0 {
            "/push/fallback"
        } else {
            "/push/queued"
        };
        let (status, v) = push(&sc, route, &body).await;
        assert_eq!(status, 202, "{v}");
        made.push(body);
    }
    // One more the operator will drop while the sidecar is down.
    let dropped = api2(99, "20221215", 3);
    let (_, v) = push(&sc, "/push/queued", &dropped).await;
    let dropped_id = v["id"].as_str().unwrap().to_string();

    // Every 202 above was fsync'd before it was sent: SIGKILL loses none of them.
    sc.kill9();

    // With the process gone, the CLI works on the store directly.
    let config = cfg.to_str().unwrap();
    let (ok, out, err) = cli(&["outbox", "list", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("21 push(es)"), "{out}");
    let (ok, _, err) = cli(&["outbox", "drop", &dropped_id, "--config", config]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["outbox", "drop", &dropped_id, "--config", config]);
    assert!(!ok && err.contains("no push"), "{err}");

    peer.start().await;
    let sc = Sidecar::start(&cfg);
    peer.wait_for(20).await;
    wait_outbox_empty(&sc).await;
    let got = peer.received();
    let expected: Vec<String> = made.iter().map(|b| ticket_of(b)).collect();
    assert_eq!(tickets(&got), expected, "all delivered, once, in order");
    assert_eq!(
        count_of(&got, &ticket_of(&dropped)),
        0,
        "a dropped push is never sent"
    );
    figures("sigkill", made.len(), &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api7_pull_returns_exactly_the_pushes_of_the_asked_dates() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::up(&pki).await;
    let cfg = write_config(dir.path(), &peer, &pki);
    let sc = Sidecar::start(&cfg);

    // Delivered at once (fallback), then queued while the peer is down: both journaled.
    let mut by_date: HashMap<&str, Vec<String>> = HashMap::new();
    let dates = ["20221209", "20221210", "20221215", "20221222", "20221223"];
    for (i, d) in dates.iter().enumerate() {
        for k in 0..2u32 {
            let body = api2(i as u32 * 10 + k, d, 2);
            let (status, v) = push(&sc, "/push/fallback", &body).await;
            assert_eq!(status, 200, "{v}");
            by_date.entry(d).or_default().push(ticket_of(&body));
        }
    }
    peer.stop().await;
    let queued = api2(77, "20221222", 3);
    let (status, _) = push(&sc, "/push/queued", &queued).await;
    assert_eq!(status, 202);
    by_date
        .entry("20221222")
        .or_default()
        .push(ticket_of(&queued));

    let pull = |json: &str| {
        let sealed = seal(json.as_bytes());
        let addr = sc.public();
        async move {
            let (status, ct, body) = request(
                addr,
                "POST",
                "/bsk/missed",
                sealed.content_type,
                sealed.body,
            )
            .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            // The answer is sealed like any other: it opens with the peer's keys.
            let plain = open_array(ct.as_deref(), &body).expect("sealed API-7 answer");
            serde_json::from_slice::<Vec<serde_json::Value>>(&plain).expect("a JSON array")
        }
    };
    let want =
        |ds: &[&str]| -> Vec<String> { ds.iter().flat_map(|d| by_date[d].clone()).collect() };
    let got =
        |records: &[serde_json::Value]| -> Vec<String> { records.iter().map(key_of).collect() };

    // The spec's own example request, with its `formDate` spelling.
    let records = pull(r#"{"formDate":"2022-12-10","toDate":"2022-12-22"}"#).await;
    assert_eq!(got(&records), want(&["20221210", "20221215", "20221222"]));
    for r in &records {
        assert!(
            r.get("citizenname").is_none() && r.get("citizenmobile").is_none(),
            "{r}"
        );
        assert_eq!(r["serviceCode"], "AMD/003");
        assert!(r["appNo"].is_string() && r["paidAmt"].is_number());
    }
    // 17-digit tickets come back as written.
    assert!(records[0]["ticketNo"].to_string().len() == 17);
    let records = pull(r#"{"fromDate":"2022-12-09","toDate":"2022-12-09"}"#).await;
    assert_eq!(got(&records), want(&["20221209"]));
    let records = pull(r#"{"From Date":"2022-12-24","To Date":"2022-12-31"}"#).await;
    assert!(records.is_empty());
    let page =
        pull(r#"{"fromDate":"2022-12-09","toDate":"2022-12-23","limit":3,"offset":2}"#).await;
    assert_eq!(
        got(&page),
        want(&["20221209", "20221210", "20221215", "20221222", "20221223"])[2..5]
    );

    // Missing dates: a 400 in the spec's error shape.
    let sealed = seal(br#"{"toDate":"2022-12-22"}"#);
    let (status, _, body) = request(
        sc.public(),
        "POST",
        "/bsk/missed",
        sealed.content_type,
        sealed.body,
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // Unsealed: refused like any ingress request.
    let (status, _, _) = request(
        sc.public(),
        "POST",
        "/bsk/missed",
        "application/json",
        br#"{"fromDate":"2022-12-09","toDate":"2022-12-23"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    let delivered = peer.received();
    figures("api7 (10 delivered + 1 queued, journaled)", 10, &delivered);
}

#[test]
fn a_corrupt_outbox_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("outbox.redb"), vec![0x42u8; 4096]).unwrap();
    let cfg = dir.path().join("sidecar.yaml");
    std::fs::write(
        &cfg,
        config("https://127.0.0.1:9/api", &pki.ca_file(), &state),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (ok, _, err) = cli(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!ok, "started on a corrupt store");
    assert!(
        err.contains("outbox store") && err.contains("move it aside"),
        "{err}"
    );
    assert!(started.elapsed() < PATIENCE);
    // The file is left as it was for the operator to inspect.
    assert_eq!(
        std::fs::read(state.join("outbox.redb")).unwrap(),
        vec![0x42u8; 4096]
    );
    // `check` explains the config, including the egress routes.
    let (ok, out, err) = cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("to bsk [token,jwt] -> https://127.0.0.1:9/api/push delivery=queued"),
        "{out}"
    );
    assert!(out.contains("API-7 from the journal"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_burst_loses_no_acknowledged_push() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::down(&pki).await;
    let cfg = write_config(dir.path(), &peer, &pki);
    let sc = Sidecar::start(&cfg);
    let addr = sc.egress();

    // 8 clients push 40 each, concurrently; the sidecar is killed mid-burst.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, String)>();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8u32 {
        let acked_tx = acked_tx.clone();
        clients.spawn(async move {
            let mut attempted = 0usize;
            for k in 0..40u32 {
                let body = api2(100 + c * 40 + k, "20221216", 2);
                let route = if k % 3 == 0 {
                    "/push/fallback"
                } else {
                    "/push/queued"
                };
                attempted += 1;
                match try_push(addr, route, &body).await {
                    Some((202, v)) => {
                        let id = v["id"].as_str().and_then(|i| i.parse().ok()).unwrap_or(0);
                        let _ = acked_tx.send((id, ticket_of(&body)));
                    }
                    Some((status, v)) => panic!("{status}: {v}"),
                    // Killed: this one and the rest of this client's were never acknowledged.
                    None => break,
                }
            }
            attempted
        });
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 120 {
        match acked_rx.recv().await {
            Some(a) => acked.push(a),
            None => break,
        }
    }
    sc.kill9();
    let mut attempted = 0;
    while let Some(n) = clients.join_next().await {
        attempted += n.unwrap();
    }
    while let Ok(a) = acked_rx.try_recv() {
        acked.push(a);
    }
    assert!(
        acked.len() >= 120 && acked.len() < 320,
        "the kill came mid-burst: {}",
        acked.len()
    );

    peer.start().await;
    let sc = Sidecar::start(&cfg);
    peer.wait_for(acked.len()).await;
    wait_outbox_empty(&sc).await;
    let got = peer.received();
    let received = tickets(&got);
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), received.len(), "nothing delivered twice");
    for (_, key) in &acked {
        assert_eq!(
            count_of(&got, key),
            1,
            "acknowledged push {key} delivered once"
        );
    }
    // In order: the acknowledged pushes arrive in the order of their ids.
    acked.sort();
    let ids_order: Vec<&String> = acked.iter().map(|(_, k)| k).collect();
    let arrival: Vec<&String> = received
        .iter()
        .filter(|k| acked.iter().any(|(_, a)| a == *k))
        .collect();
    assert_eq!(arrival, ids_order);
    eprintln!(
        "FIGURES sigkill mid-burst: pushes attempted {attempted}, acknowledged {}, delivered {} ({} committed but unacknowledged when killed), duplicates 0, acknowledged lost 0",
        acked.len(),
        received.len(),
        received.len() - acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_and_outbound_rate_limit() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::down_with(&pki, true).await;
    peer.start().await;
    let state = dir.path().join("state");
    let base = config(&peer.url(), &pki.ca_file(), &state);

    // Without a client certificate the peer refuses the handshake: 502, nothing received.
    let plain_cfg = dir.path().join("no-cert.yaml");
    std::fs::write(&plain_cfg, &base).unwrap();
    let body = r#"{"userId":9054233544,"deptCode":"AMD","accessCode":7364443}"#;
    {
        let sc = Sidecar::start(&plain_cfg);
        let (status, v) = push(&sc, "/api6", body).await;
        assert_eq!(
            (status, v["reason"].as_str()),
            (502, Some("peer_unavailable")),
            "{v}"
        );
    }
    assert!(peer.received().is_empty());

    // With it (and an outbound limit of 1/s, burst 2), the same call goes through.
    let tls = format!("tls: {{ ca: \"{}\" }}", pki.ca_file().display());
    let with_cert = base.replace(
        &tls,
        &format!(
            "tls: {{ ca: \"{}\", client_cert: \"{}\", client_key: \"{}\" }}\n    rate: {{ per_second: 1, burst: 2 }}",
            pki.ca_file().display(),
            pki.client_cert().display(),
            pki.client_key().display()
        ),
    );
    assert_ne!(with_cert, base);
    let cert_cfg = dir.path().join("cert.yaml");
    std::fs::write(&cert_cfg, with_cert).unwrap();
    let sc = Sidecar::start(&cert_cfg);
    for _ in 0..2 {
        let (status, v) = push(&sc, "/api6", body).await;
        assert_eq!(status, 200, "{v}");
    }
    // The third within the second: `direct` answers 429; `fallback` queues it instead,
    // and the delivery task sends it once the bucket refills.
    let (status, v) = push(&sc, "/api6", body).await;
    assert_eq!(
        (status, v["reason"].as_str()),
        (429, Some("rate_limited_peer")),
        "{v}"
    );
    let later = api2(1, "20221220", 2);
    let (status, v) = push(&sc, "/push/fallback", &later).await;
    assert_eq!(
        (status, v["message"].as_str()),
        (202, Some("Queued")),
        "{v}"
    );
    peer.wait_for(3).await;
    wait_outbox_empty(&sc).await;
    assert_eq!(count_of(&peer.received(), &ticket_of(&later)), 1);
    figures("mtls + rate", 1, &peer.received()[2..]);
}
