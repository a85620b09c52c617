//! What a sysadmin installs: the example configs pass `bsk-sidecar check`; the systemd
//! unit passes `systemd-analyze verify` and rates 2.0 or lower in `systemd-analyze
//! security`; `/metrics` passes `promtool check metrics` and a real Prometheus on
//! loopback scrapes it; the alert rules pass `promtool check rules` and their unit tests.
//!
//! The tools come from `.ci/install-ops-deps`. Under `CI=true` a missing tool fails the
//! test; elsewhere the test says SKIPPED and returns.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsk-sidecar");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
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

/// A self-signed certificate and key for `localhost`, as PEM files.
fn write_tls(dir: &Path, cert: &str, key: &str) {
    let k = rcgen::KeyPair::generate().unwrap();
    let c = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&k)
        .unwrap();
    std::fs::write(dir.join(key), k.serialize_pem()).unwrap();
    std::fs::write(dir.join(cert), c.pem()).unwrap();
}

/// An example config with `/etc/bsk-sidecar/` and `/var/lib/bsk-sidecar` moved into `dir`.
fn localised(example: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo(example)).unwrap();
    let text = text
        .replace("/etc/bsk-sidecar/", &format!("{}/", dir.display()))
        .replace(
            "/var/lib/bsk-sidecar",
            &dir.join("state").display().to_string(),
        );
    let path = dir.join(Path::new(example).file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    path
}

fn check(config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config"]).arg(config);
    cmd.env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The README's "run it for real" config needs nothing but the file itself.
#[test]
fn local_example_passes_check_as_shipped() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.yaml");
    let out = check(&config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("/bsk/landing from bsk [form,aes]"),
        "{stdout}"
    );
}

#[test]
fn department_example_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = localised("config/department.yaml", dir.path());
    write_tls(dir.path(), "tls.crt", "tls.key");
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for (name, value) in [
        ("bsk_passcode", "376423"),
        ("bsk_jwt", "department-jwt-secret-0123456789\n"),
        ("bsk_aes_key", SPEC_KEY),
        ("bsk_aes_iv", SPEC_IV),
        ("admin_token", "department-admin-token\n"),
    ] {
        std::fs::write(creds.join(name), value).unwrap();
    }
    let creds_s = creds.display().to_string();
    let env = [("CREDENTIALS_DIRECTORY", creds_s.as_str())];
    let out = check(&config, &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": OK"), "{stdout}");
    // API-7 in the deployed shape: the inner passcode is checked, freshness is off.
    let missed_data = stdout
        .lines()
        .find(|l| l.contains("/bsk/missed-data"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        missed_data.contains("from bsk [form,aes,passcode]"),
        "{missed_data}"
    );
    assert!(stdout.contains("protected by admin.token"), "{stdout}");
    assert!(!stdout.contains("department-admin-token"), "{stdout}");

    // Every credential the config names is handed over by the unit.
    let yaml = std::fs::read_to_string(repo("config/department.yaml")).unwrap();
    let unit = std::fs::read_to_string(repo("systemd/bsk-sidecar.service")).unwrap();
    let names = yaml
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split("credential: ").skip(1))
        .filter_map(|r| r.split([' ', '}']).next());
    for name in names {
        assert!(
            unit.contains(&format!(
                "LoadCredential={name}:/etc/bsk-sidecar/credentials/{name}\n"
            )),
            "no LoadCredential= for `{name}` in the unit"
        );
    }

    // Without its certificate the same file is refused, naming the field.
    std::fs::remove_file(dir.path().join("tls.key")).unwrap();
    let out = check(&config, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("listeners[0].tls.key: cannot read"),
        "{stderr}"
    );
}

#[test]
fn portal_example_passes_check_with_systemd_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = localised("config/portal.yaml", dir.path());
    write_tls(dir.path(), "tls.crt", "tls.key");
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for dept in ["wbhealth", "wbfood", "pnrd"] {
        for (name, value) in [
            ("passcode", "376423\n"),
            ("jwt", "portal-jwt-secret-0123456789abcdef"),
            ("aes_key", SPEC_KEY),
            ("aes_iv", SPEC_IV),
        ] {
            std::fs::write(creds.join(format!("{dept}_{name}")), value).unwrap();
        }
    }
    std::fs::write(creds.join("admin_token"), "portal-admin-token").unwrap();
    let creds_s = creds.display().to_string();
    let out = check(&config, &[("CREDENTIALS_DIRECTORY", &creds_s)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("peer     wbfood"), "{stdout}");
    assert!(stdout.contains("food-gw.example.in"), "{stdout}");

    // Outside systemd (no $CREDENTIALS_DIRECTORY), every credential is reported.
    let out = check(&config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("peers.wbfood.passcode: credential `wbfood_passcode`: $CREDENTIALS_DIRECTORY is not set"),
        "{stderr}"
    );
    // A missing credential file names its path.
    std::fs::remove_file(creds.join("pnrd_jwt")).unwrap();
    let out = check(&config, &[("CREDENTIALS_DIRECTORY", &creds_s)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("peers.pnrd.jwt.secret: cannot read credential"),
        "{stderr}"
    );
    // The value is a secret: the passcode never appears in the output.
    assert!(!stderr.contains("376423") && !stdout.contains("376423"));
}

#[test]
fn systemd_unit_verifies_and_rates_at_most_2() {
    if !require("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo("systemd/bsk-sidecar.service")).unwrap();
    for directive in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "StateDirectory=bsk-sidecar",
        "ConfigurationDirectory=bsk-sidecar",
        "LoadCredential=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(unit.contains(directive), "unit lacks {directive}");
    }
    // verify checks that ExecStart= exists: point it at the binary cargo built.
    let unit = unit.replace("/usr/bin/bsk-sidecar", BIN);
    let path = dir.path().join("bsk-sidecar.service");
    std::fs::write(&path, unit).unwrap();

    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for bsk-sidecar.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

#[test]
fn alert_rules_pass_promtool() {
    if !require("promtool") {
        return;
    }
    let rules = repo("config/prometheus/bsk-sidecar.rules.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("promtool")
        .args(["test", "rules", "bsk-sidecar.rules.test.yml"])
        .current_dir(repo("config/prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sidecar with every kind of series: TLS listener, a DNS name (looked up against a
/// closed loopback port, so the failure series exist), a request or two.
async fn sidecar_with_every_series(dir: &Path) -> Sidecar {
    write_tls(dir, "tls.crt", "tls.key");
    let dead_dns = closed_port().await;
    let yaml = format!(
        r#"
admin: {{ listen: 127.0.0.1:0, metrics: open }}
state: {{ dir: {state} }}
dns: {{ servers: ["{dead_dns}"], timeout: 100ms }}
peers:
  bsk:
    agid: BSK
    aes: {{ keys: [ {{ key: "{SPEC_KEY}", iv: "{SPEC_IV}" }} ] }}
    allow: [127.0.0.0/8, portal.test.example]
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - {{ path: /in, from: bsk, envelope: [aes], upstream: "http://127.0.0.1:9/x" }}
  - name: secure
    listen: 127.0.0.1:0
    tls: {{ cert: {dir}/tls.crt, key: {dir}/tls.key }}
    routes:
      - {{ path: /in, from: bsk, envelope: [aes], upstream: "http://127.0.0.1:9/x" }}
"#,
        state = dir.join("state").display(),
        dir = dir.display()
    );
    let sc = Sidecar::start(&yaml, &[]).await;
    let to = sc.addr;
    send(to, post(to, "/in", Some("text/plain"), "not sealed")).await;
    send(to, post(to, "/nothing", None, "")).await;
    sc
}

#[tokio::test]
async fn metrics_pass_promtool_check_metrics() {
    if !require("promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar_with_every_series(dir.path()).await;
    let body = admin_get(sc.admin.unwrap(), "/metrics").await.body;
    let text = String::from_utf8_lossy(&body).into_owned();
    for series in [
        "bsk_sidecar_requests_total{",
        "bsk_sidecar_rejections_total{",
        "bsk_sidecar_tls_cert_expiry_timestamp_seconds{listener=\"secure\"}",
        "bsk_sidecar_dns_resolutions_total{name=\"portal.test.example\",outcome=\"error\"}",
        "bsk_sidecar_config_last_load_timestamp_seconds",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn prometheus_get(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let req = request(Method::GET, addr, path)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send_from(LOCAL, addr, req).await.ok()?;
    serde_json::from_slice(&answer.body).ok()
}

/// Kills the Prometheus child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_admin_listener() {
    if !require("prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar_with_every_series(dir.path()).await;
    let admin = sc.admin.unwrap();
    let web = closed_port().await;
    let rules = repo("config/prometheus/bsk-sidecar.rules.yml");
    let config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
         rule_files: [\"{}\"]\n\
         scrape_configs:\n  - job_name: bsk-sidecar\n    static_configs: [{{ targets: [\"{admin}\"] }}]\n",
        rules.display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let _prom = Child(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts"),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    // The target is up...
    loop {
        let targets = prometheus_get(web, "/api/v1/targets").await;
        let up = targets.as_ref().is_some_and(|t| {
            t["data"]["activeTargets"]
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t["health"] == "up"))
        });
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "target never up: {targets:?}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ... its series are stored ...
    loop {
        let q = prometheus_get(web, "/api/v1/query?query=bsk_sidecar_requests_total").await;
        let found = q.as_ref().is_some_and(|v| {
            v["data"]["result"].as_array().is_some_and(|r| {
                r.iter().any(|s| {
                    s["metric"]["job"] == "bsk-sidecar" && s["metric"]["outcome"] == "rejected"
                })
            })
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sidecar series: {q:?}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ... and the alert rules loaded in a real Prometheus.
    let rules = prometheus_get(web, "/api/v1/rules").await.unwrap();
    let names: Vec<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"BskSidecarCertificateExpiringSoon"),
        "{names:?}"
    );
    assert!(
        names.contains(&"BskSidecarDnsResolutionFailing"),
        "{names:?}"
    );
}
