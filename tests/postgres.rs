//! Sidecar processes sharing one PostgreSQL (`state.backend.postgres`) for the outbox,
//! idempotency keys and the API-7 journal: a replica killed with pushes queued has them
//! delivered by another, exactly once and in order; the same push through two replicas
//! is one push; PostgreSQL down means 503 `store_unavailable` and recovery without a
//! restart; a schema newer than the binary refuses start-up.
//!
//! Each test starts its own cluster (`initdb` + `pg_ctl`) on a free loopback port,
//! stopped when the test ends, however it ends. As root (CI), PostgreSQL runs as the
//! `postgres` user via `runuser`. Needs the PostgreSQL server binaries
//! (`.ci/install-state-deps`); under `CI=true` missing ones fail the test.

mod egress_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use egress_support::*;

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else PATH, else the Debian
/// layout.
fn pg_bindir() -> Option<PathBuf> {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut candidates: Vec<PathBuf> = from_config.into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = dirs.flatten().map(|d| d.path().join("bin")).collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn pg_available() -> Option<PathBuf> {
    let found = pg_bindir();
    if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("initdb/pg_ctl are missing; `bash .ci/install-state-deps` installs PostgreSQL");
    }
    if found.is_none() {
        eprintln!("SKIPPED: initdb/pg_ctl are missing; `bash .ci/install-state-deps` installs PostgreSQL. Under CI=true this is a failure.");
    }
    found
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL cluster of the test's own; stopped on drop.
struct Cluster {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
    running: bool,
    /// `-c` options for TLS, when it serves TLS.
    tls_opts: String,
}

/// A CA and a certificate it issued for 127.0.0.1: (CA PEM, certificate PEM, key PEM).
fn test_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

impl Cluster {
    fn start(bindir: &Path) -> Cluster {
        Cluster::start_with(bindir, None)
    }

    /// With `tls` (certificate PEM, key PEM), the server accepts TLS with that identity.
    fn start_with(bindir: &Path, tls: Option<(&str, &str)>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut tls_opts = String::new();
        if let Some((cert, key)) = tls {
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
            tls_opts = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                c.display(),
                k.display()
            );
        }
        let as_postgres = is_root();
        if as_postgres {
            // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown the cluster directory to postgres");
        }
        let port = port::unclaimed();
        let mut c = Cluster {
            bindir: bindir.to_path_buf(),
            dir,
            port,
            as_postgres,
            running: false,
            tls_opts,
        };
        let data = c.data();
        let out = c
            .tool("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.pg_ctl_start();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str) -> Command {
        let bin = self.bindir.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn pg_ctl_start(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1{}",
            self.port,
            self.dir.path().display(),
            self.tls_opts
        );
        let out = self
            .tool("pg_ctl")
            .arg("start")
            .arg("-w")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-o", &opts])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
        self.running = true;
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .tool("pg_ctl")
            .args(["stop", "-w", "-m", "fast", "-D"])
            .arg(self.data())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// A client of the test's own, for what the sidecar must find in the database.
    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(conn);
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The egress test config with `state.backend.postgres` added.
fn write_config(dir: &Path, name: &str, peer: &RemotePeer, pki: &Pki, pg: &Cluster) -> PathBuf {
    write_config_url(dir, name, peer, pki, &pg.url())
}

fn write_config_url(dir: &Path, name: &str, peer: &RemotePeer, pki: &Pki, url: &str) -> PathBuf {
    let state = dir.join(format!("state-{name}"));
    let text = config(&peer.url(), &pki.ca_file(), &state);
    let plain = format!("dir: \"{}\" }}", state.display());
    // The pushes are dated December 2022: a retention of ~24 years keeps them from the
    // pruning every start runs (and still prunes what a test dates 2001).
    let with_pg = format!(
        "dir: \"{}\", journal_retention: 9000d, backend: {{ postgres: \"{}\" }} }}",
        state.display(),
        url
    );
    assert!(text.contains(&plain));
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, text.replacen(&plain, &with_pg, 1)).unwrap();
    cfg
}

/// Starts two replicas at once (both migrate at start: the advisory lock orders them).
fn two_replicas(a: &Path, b: &Path) -> (Sidecar, Sidecar) {
    std::thread::scope(|s| {
        let ta = s.spawn(|| Sidecar::start(a));
        let tb = s.spawn(|| Sidecar::start(b));
        (ta.join().unwrap(), tb.join().unwrap())
    })
}

async fn pull_journal(sc: &Sidecar, json: &str) -> Vec<String> {
    let sealed = seal(json.as_bytes());
    let (status, ct, body) = request(
        sc.public(),
        "POST",
        "/bsk/missed",
        sealed.content_type,
        sealed.body,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let plain = open_array(ct.as_deref(), &body).expect("sealed API-7 answer");
    let records: Vec<serde_json::Value> = serde_json::from_slice(&plain).expect("JSON array");
    records.iter().map(key_of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_pushes_are_delivered_by_the_other_once_and_in_order() {
    let Some(bindir) = pg_available() else { return };
    let pg = Cluster::start(&bindir);
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::down(&pki).await;
    let (ca, cb) = (
        write_config(dir.path(), "a", &peer, &pki, &pg),
        write_config(dir.path(), "b", &peer, &pki, &pg),
    );
    let (a, b) = two_replicas(&ca, &cb);

    // The portal is down: 50 pushes, alternating between the replicas, all queued.
    let mut made = Vec::new();
    for n in 0..50u32 {
        let body = api2(n, "20221210", 2);
        let sc = if n % 2 == 0 { &a } else { &b };
        let (status, v) = push(sc, "/push/queued", &body).await;
        assert_eq!(status, 202, "{v}");
        made.push(ticket_of(&body));
    }
    // Either replica lists the whole fleet's queue, and so does the CLI, straight from
    // PostgreSQL (no admin listener needed).
    assert_eq!(outbox(&b).await["queued"].as_array().unwrap().len(), 50);
    let (ok, out, err) = cli(&["outbox", "list", "--config", ca.to_str().unwrap()]);
    assert!(ok && out.contains("50 push(es)"), "{out}{err}");

    a.kill9();
    peer.start().await;
    peer.wait_for(50).await;
    wait_outbox_empty(&b).await;

    let got = tickets(&peer.received());
    assert_eq!(got, made, "each push once, in the order they were made");

    // API-7 on the surviving replica answers from every replica's pushes.
    let journal = pull_journal(&b, r#"{"fromDate":"2022-12-10","toDate":"2022-12-10"}"#).await;
    assert_eq!(journal, made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_push_through_two_replicas_is_one_push() {
    let Some(bindir) = pg_available() else { return };
    let pg = Cluster::start(&bindir);
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::down(&pki).await;
    let (ca, cb) = (
        write_config(dir.path(), "a", &peer, &pki, &pg),
        write_config(dir.path(), "b", &peer, &pki, &pg),
    );
    let (a, b) = two_replicas(&ca, &cb);

    // Sent to both at the same instant: one row wins, both answers name it.
    let body = api2(7, "20221211", 2);
    let (ra, rb) = tokio::join!(
        push(&a, "/push/queued", &body),
        push(&b, "/push/queued", &body)
    );
    assert_eq!((ra.0, rb.0), (202, 202), "{} {}", ra.1, rb.1);
    assert_eq!(ra.1["id"], rb.1["id"]);
    let id = ra.1["id"].clone();

    // An operator drops another queued push through the CLI of the other replica's
    // config: it is never sent, nor journaled.
    let dropped = api2(8, "20221211", 2);
    let (status, v) = push(&a, "/push/queued", &dropped).await;
    assert_eq!(status, 202, "{v}");
    let drop_id = v["id"].as_str().unwrap().to_string();
    let (ok, out, err) = cli(&["outbox", "drop", &drop_id, "--config", cb.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(&["outbox", "drop", &drop_id, "--config", cb.to_str().unwrap()]);
    assert!(!ok && err.contains("no push with id"), "{err}");

    // A push past its max_age is dead-lettered by whichever replica sees it first; the
    // admin API of the other retries it (back to the queue) and then drops it.
    let short = api2(10, "20221211", 2);
    let (status, v) = push(&a, "/push/short", &short).await;
    assert_eq!(status, 202, "{v}");
    let short_id = v["id"].as_str().unwrap().to_string();
    let listed_in = |v: &serde_json::Value, state: &str| {
        v[state]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"].as_u64() == short_id.parse::<u64>().ok())
    };
    let deadline = Instant::now() + PATIENCE;
    while !listed_in(&outbox(&b).await, "dead") {
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let admin = |action: &str, id: &str| {
        let path = format!("/outbox/{id}/{action}");
        let auth = auth.clone();
        let addr = b.admin;
        async move {
            admin_request(addr, "POST", &path, &[("authorization", &auth)])
                .await
                .0
        }
    };
    assert_eq!(admin("retry", &short_id).await, 200);
    assert_eq!(admin("retry", "999999").await, 404);
    assert_eq!(admin("drop", &short_id).await, 200);
    let after = outbox(&b).await;
    assert!(
        !listed_in(&after, "dead") && !listed_in(&after, "queued"),
        "{after}"
    );

    peer.start().await;
    peer.wait_for(1).await;
    wait_outbox_empty(&a).await;
    // Delivered: a later copy through either replica is answered from the record.
    for sc in [&a, &b] {
        let (status, v) = push(sc, "/push/queued", &body).await;
        assert_eq!((status, &v["message"]), (200, &"Already delivered".into()));
        assert_eq!(v["id"], id);
    }
    assert_eq!(count_of_ticket(&peer, &ticket_of(&body)), 1);
    assert_eq!(peer.received().len(), 1);
    let journal = pull_journal(&b, r#"{"fromDate":"2022-12-11","toDate":"2022-12-11"}"#).await;
    assert_eq!(journal, vec![ticket_of(&body)]);

    // `delivery: fallback` sends at once, before any row exists: the fleet-wide claim
    // lets one replica send; the other is told the push is in progress, or (once it is
    // done) that it was delivered.
    let sync = api2(9, "20221213", 2);
    let (ra, rb) = tokio::join!(
        push(&a, "/push/fallback", &sync),
        push(&b, "/push/fallback", &sync)
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert!(
        statuses == [200, 200] || statuses == [200, 409],
        "{} {}",
        ra.1,
        rb.1
    );
    for (status, v) in [&ra, &rb] {
        if *status == 409 {
            assert_eq!(v["reason"], "push_in_progress", "{v}");
        }
    }
    let (status, v) = push(&b, "/push/fallback", &sync).await;
    assert_eq!(
        (status, &v["message"]),
        (200, &"Already delivered".into()),
        "{v}"
    );
    assert_eq!(count_of_ticket(&peer, &ticket_of(&sync)), 1);
}

fn count_of_ticket(peer: &RemotePeer, ticket: &str) -> usize {
    tickets(&peer.received())
        .iter()
        .filter(|t| *t == ticket)
        .count()
}

/// `bsk_sidecar_backend_errors_total{backend="postgres"}`, summed over operations.
async fn store_errors(sc: &Sidecar) -> u64 {
    let (_, _, m) = request(sc.admin, "GET", "/metrics", "text/plain", Vec::new()).await;
    String::from_utf8_lossy(&m)
        .lines()
        .filter(|l| {
            l.starts_with("bsk_sidecar_backend_errors_total{")
                && l.contains(r#"backend="postgres""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_refuses_pushes_with_503_and_recovers_without_a_restart() {
    let Some(bindir) = pg_available() else { return };
    let mut pg = Cluster::start(&bindir);
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = RemotePeer::down(&pki).await;
    let cfg = write_config(dir.path(), "a", &peer, &pki, &pg);
    let sc = Sidecar::start(&cfg);

    let before = api2(1, "20221212", 2);
    let (status, v) = push(&sc, "/push/queued", &before).await;
    assert_eq!(status, 202, "{v}");

    pg.stop();
    let refused = api2(2, "20221212", 2);
    for route in ["/push/queued", "/push/fallback"] {
        let (status, v) = push(&sc, route, &refused).await;
        assert_eq!(
            (status, v["reason"].as_str()),
            (503, Some("store_unavailable")),
            "{route}: {v}"
        );
    }
    assert!(store_errors(&sc).await > 0, "store failures are counted");

    // Back: the same sidecar accepts again, on its own.
    pg.pg_ctl_start();
    let after = api2(3, "20221212", 2);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, v) = push(&sc, "/push/queued", &after).await;
        if status == 202 {
            break;
        }
        assert_eq!(v["reason"], "store_unavailable", "{v}");
        assert!(Instant::now() < deadline, "pushes not accepted again: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing accepted was lost; nothing refused was sent.
    peer.start().await;
    peer.wait_for(2).await;
    wait_outbox_empty(&sc).await;
    let got: HashSet<String> = tickets(&peer.received()).into_iter().collect();
    let want: HashSet<String> = [ticket_of(&before), ticket_of(&after)].into();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_refuses_start_up() {
    let Some(bindir) = pg_available() else { return };
    let pg = Cluster::start(&bindir);
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let peer = RemotePeer::down(&pki).await;
    let cfg = write_config(dir.path(), "a", &peer, &pki, &pg);

    // A first start creates the schema; `check --online` reports its version.
    Sidecar::start(&cfg).kill9();
    let client = pg.client().await;

    // Rows past the retention (9000 days here) go at the next start's pruning;
    // recent ones and keys of pushes still queued stay.
    let today = unix_now() * 1000;
    client
        .batch_execute(&format!(
            "INSERT INTO bsk_journal VALUES ('bsk', '2001-01-01', 1, '{{}}'), ('bsk', '2099-01-01', 2, '{{}}');
             INSERT INTO bsk_idempotency VALUES ('old', 1, true, 1000), ('queued', 3, false, 1000),
                 ('recent', 2, true, {today});"
        ))
        .await
        .unwrap();
    let sc = Sidecar::start(&cfg);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM bsk_journal) + (SELECT count(*) FROM bsk_idempotency)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old rows not pruned ({left} left)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept: Vec<String> = client
        .query("SELECT key FROM bsk_idempotency ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, ["queued", "recent"]);
    sc.kill9();

    let (_, out, err) = cli(&["check", "--online", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.contains("state.backend.postgres") && out.contains("schema v1"),
        "{out}{err}"
    );
    assert!(
        !out.contains(&pg.url()) && !err.contains(&pg.url()),
        "URL never printed"
    );

    client
        .execute("INSERT INTO bsk_schema_version (version) VALUES (99)", &[])
        .await
        .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_bsk-sidecar"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a sidecar started on a newer schema");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("schema is version 99, newer than this bsk-sidecar knows (1)"),
        "{err}"
    );
}

/// `ticketNo/applicationStatus` of a push.
fn ticket_of(json: &str) -> String {
    key_of(&serde_json::from_str(json).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_is_used_and_its_certificate_verified() {
    let Some(bindir) = pg_available() else { return };
    let (ca, cert, key) = test_ca();
    let pg = Cluster::start_with(&bindir, Some((&cert, &key)));
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let peer = RemotePeer::up(&pki).await;
    let ca_file = dir.path().join("pg-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    // No sslmode: TLS is the default.
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let cfg = write_config_url(dir.path(), "a", &peer, &pki, &url);

    // Trusting the CA that issued PostgreSQL's certificate: pushes go through, over TLS.
    let sc = Sidecar::start_with_env(&cfg, &[("SSL_CERT_FILE", &ca_file)]);
    let (status, v) = push(&sc, "/push/queued", &api2(1, "20221214", 2)).await;
    assert_eq!(status, 202, "{v}");
    let client = pg.client().await;
    let over_tls: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name = 'bsk-sidecar'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(over_tls > 0, "the sidecar's connections use TLS");
    let plain: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE NOT s.ssl AND a.application_name = 'bsk-sidecar'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);

    // Without that CA the certificate is not trusted: `check --online` fails on it.
    let (ok, out, err) = cli(&["check", "--online", "--config", cfg.to_str().unwrap()]);
    assert!(!ok, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL state.backend.postgres")),
        "{out}{err}"
    );
}
