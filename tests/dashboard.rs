//! The Grafana dashboard (`config/grafana/bsk-sidecar.json`): importable with the data
//! source as a variable, and every PromQL expression in it valid (`promtool check
//! rules`) and naming only series and labels a running sidecar actually exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bsk_sidecar::envelope::{BodyShape, Layer};
use support::*;

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/bsk-sidecar.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard is JSON")
}

/// Whether `tool` runs; a missing tool panics under CI, else the test is skipped.
fn require(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is missing: install it with `bash .ci/install-ops-deps`");
    }
    eprintln!("SKIPPED: {tool} is missing; `bash .ci/install-ops-deps` installs it. Under CI=true this is a failure.");
    false
}

/// Every panel that draws something (rows only group).
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// (panel title, PromQL) for every query of every panel.
fn expressions(d: &serde_json::Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect()
}

/// Grafana's variables replaced by what Grafana would send Prometheus.
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$listener", ".*")
}

/// The `bsk_sidecar_*` names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("bsk_sidecar_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Label names an expression groups by or matches on.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        let list = part.split(')').next().unwrap();
        labels.extend(list.split(',').map(|l| l.trim().to_string()));
    }
    for part in expr.split('{').skip(1) {
        let matchers = part.split('}').next().unwrap();
        for m in matchers.split(',') {
            if let Some(name) = m.split(['=', '!']).next() {
                labels.insert(name.trim().to_string());
            }
        }
    }
    labels.remove("le");
    labels.remove("instance");
    labels.retain(|l| !l.is_empty());
    labels
}

#[test]
fn dashboard_is_importable_with_the_data_source_as_a_variable() {
    let d = dashboard();
    assert_eq!(d["uid"], "bsk-sidecar");
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    // No data source is baked in: every panel and query uses the variable.
    let text = d.to_string();
    assert!(!text.contains("DS_PROMETHEUS"), "a fixed data source input");
    for p in panels(&d) {
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{}", p["title"]);
        }
    }
    // Panel ids are unique, as Grafana requires.
    let ids: Vec<_> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len());

    // The panels the issue asks for, found by what they query.
    let all: Vec<String> = expressions(&d).into_iter().map(|(_, e)| e).collect();
    let any = |needle: &str| all.iter().any(|e| e.contains(needle));
    assert!(any("rate(bsk_sidecar_requests_total"), "traffic");
    assert!(
        any("sum by (reason) (rate(bsk_sidecar_rejections_total"),
        "refusals by reason"
    );
    assert!(any("histogram_quantile(0.99, sum by (le) (rate(bsk_sidecar_request_duration_seconds_bucket"), "latency quantiles");
    assert!(any("outcome=\"upstream_error\""), "upstream errors");
    assert!(
        any("bsk_sidecar_outbox_queue_depth") && any("bsk_sidecar_outbox_oldest_age_seconds"),
        "outbox"
    );
    assert!(
        any("bsk_sidecar_tls_cert_expiry_timestamp_seconds"),
        "certificate expiry"
    );
}

#[test]
fn every_expression_passes_promtool() {
    if !require("promtool") {
        return;
    }
    let d = dashboard();
    let exprs = expressions(&d);
    assert!(exprs.len() >= 15, "{} expressions", exprs.len());
    // Each expression as a recording rule: promtool parses and type-checks it.
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({ "record": format!("dashboard:expr_{i}"), "expr": as_sent(e) }))
        .collect();
    let file = serde_json::json!({ "groups": [ { "name": "dashboard", "rules": rules } ] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    // JSON is YAML.
    std::fs::write(&path, file.to_string()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One `name{labels} value` line of the exposition: the name and its label names.
fn series(line: &str) -> Option<(String, BTreeSet<String>)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let labels = line[name_end..]
        .strip_prefix('{')
        .and_then(|r| r.split('}').next())
        .map(|l| {
            l.split(',')
                .filter_map(|kv| kv.split('=').next())
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Some((name, labels))
}

#[tokio::test]
async fn every_series_the_dashboard_reads_is_exported() {
    let d = dashboard();
    let exprs = expressions(&d);
    let wanted: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();

    // A sidecar with every kind of series: a TLS listener, a DNS name, an egress route
    // to a peer that never answers (queued pushes, attempts, a dead letter).
    let dir = tempfile::tempdir().unwrap();
    let k = rcgen::KeyPair::generate().unwrap();
    let c = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&k)
        .unwrap();
    std::fs::write(dir.path().join("tls.key"), k.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("tls.crt"), c.pem()).unwrap();
    let closed = closed_port().await;
    let app = Upstream::start(Behaviour::Echo).await;
    // `localhost` resolves from the hosts file, with no DNS server involved.
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0, metrics: open }}
state: {{ dir: {state} }}
peers:
  bsk:
    agid: BSK
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
    allow: [127.0.0.1/32, localhost]
    url: http://{closed}/api
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /in, from: bsk, envelope: [aes], upstream: "http://{closed}/x" }}
      - {{ path: /app, from: bsk, envelope: [aes], schema: api1, schema_mode: warn, fresh: off, replay: false, upstream: "http://{app}/app" }}
  - name: secure
    listen: 127.0.0.1:0
    tls: {{ cert: {dir}/tls.crt, key: {dir}/tls.key }}
    routes:
      - {{ path: /in, from: bsk, envelope: [aes], upstream: "http://{closed}/x" }}
  - name: egress
    listen: 127.0.0.1:0
    routes:
      - {{ path: /push, to: bsk, remote: /push, envelope: [aes], delivery: queued, max_age: 200ms, retry: {{ initial: 50ms, max: 100ms }} }}
"#,
        state = dir.path().join("state").display(),
        dir = dir.path().display(),
        app = app.addr,
    );
    let sc = Sidecar::start(&yaml, &[]).await;
    let to = sc.addr;
    // A refusal, an upstream error, a push that dies.
    send(to, post(to, "/in", Some("text/plain"), "not sealed")).await;
    let sealed = seal(
        &[Layer::Aes],
        &sc.keys("bsk"),
        br#"{"a":1}"#,
        BodyShape::Json,
    );
    send(to, sealed_post(to, "/in", &sealed)).await;
    // Forwarded with a schema warning (the upstream answers), and a connection from an
    // address the allowlist refuses at accept.
    let odd = seal(
        &[Layer::Aes],
        &sc.keys("bsk"),
        br#"{"userid":"12"}"#,
        BodyShape::Json,
    );
    let forwarded = send(to, sealed_post(to, "/app", &odd)).await;
    assert_eq!(forwarded.status, 200, "{}", forwarded.text());
    let _ = connect_from("127.0.0.2".parse().unwrap(), to).await;
    let egress = sc.listener("egress");
    let pushed = send(
        egress,
        post(egress, "/push", Some("application/json"), r#"{"a":1}"#),
    )
    .await;
    assert_eq!(pushed.status, 202, "{}", pushed.text());

    let deadline = Instant::now() + Duration::from_secs(20);
    let exported = loop {
        let body = admin_get(sc.admin.unwrap(), "/metrics").await.body;
        let text = String::from_utf8_lossy(&body).into_owned();
        let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, labels) in text.lines().filter_map(series) {
            exported.entry(name).or_default().extend(labels);
        }
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !exported.contains_key(*n))
            .collect();
        if missing.is_empty() {
            break exported;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard reads {missing:?}, never exported:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every label an expression groups by or matches on is on a series it reads.
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        let have: BTreeSet<&String> = names.iter().flat_map(|n| &exported[n]).collect();
        for label in label_names(expr) {
            assert!(
                have.contains(&label),
                "panel `{title}`: no series of {names:?} has label `{label}`"
            );
        }
    }
}
