//! TLS listeners: a CA and certificates made at test time (rcgen); a Rust client
//! (tokio-rustls), curl and openssl s_client on loopback; client certificates (mTLS)
//! from the right CA accepted, expired / wrong-CA / missing ones refused; certificate
//! reload on file change and on SIGHUP's code path, keeping the last good certificate.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::{Sidecar, PATIENCE};

/// A CA and what it issues, written as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("bsk-sidecar test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server certificate for `localhost` / 127.0.0.1, written to `NAME.crt/.key`.
    fn server(&self, name: &str, cn: &str) -> Issued {
        let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        issue(&self.ca, p, &self.dir, name)
    }

    /// A client certificate issued by `issuer`, valid between the two years (1 January).
    fn client(
        &self,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        valid: (i32, i32),
    ) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(valid.0, 1, 1);
        p.not_after = rcgen::date_time_ymd(valid.1, 1, 1);
        issue(issuer, p, &self.dir, name)
    }
}

fn issue(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    params: CertificateParams,
    dir: &tempfile::TempDir,
    name: &str,
) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.path().join(format!("{name}.crt"));
    let key_path = dir.path().join(format!("{name}.key"));
    // Key first: a watcher that sees the new certificate finds its key already there.
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    Issued {
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
    }
}

/// Installs `issued` as the files the sidecar serves (`server.crt` / `server.key`).
fn install(pki: &Pki, issued: &Issued) {
    std::fs::copy(&issued.key, pki.path("server.key")).unwrap();
    std::fs::copy(&issued.cert, pki.path("server.crt")).unwrap();
}

fn config(pki: &Pki, client_ca: Option<&Path>, watch: &str) -> String {
    let client_ca = client_ca
        .map(|p| format!(", client_ca: {}", p.display()))
        .unwrap_or_default();
    format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: {state} }}
peers:
  bsk:
    agid: BSK
    aes: {{ keys: [ {{ key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }} ] }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    tls: {{ cert: {cert}, key: {key}{client_ca}, handshake_timeout: 500ms, watch: {watch} }}
    routes:
      - path: /bsk/landing
        from: bsk
        envelope: [form, aes]
        ip_check: false
        upstream: http://127.0.0.1:9/unused
"#,
        state = pki.path("state").display(),
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
    )
}

fn client_config(
    roots: &[&Path],
    client: Option<&Issued>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        for c in bsk_sidecar::tls::read_certs(r).unwrap() {
            store.add(c).unwrap();
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(bsk_sidecar::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let certs = bsk_sidecar::tls::read_certs(&c.cert).unwrap();
            let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    Arc::new(config)
}

/// What a TLS exchange produced: the server's leaf certificate, the version, the answer.
struct Exchange {
    leaf: CertificateDer<'static>,
    version: rustls::ProtocolVersion,
    answer: String,
}

/// Connects with `config`, sends a GET for an unknown path, reads the whole answer.
async fn get(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Exchange> {
    let run = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
        let version = conn.protocol_version().unwrap();
        tls.write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        if out.is_empty() {
            // TLS 1.3 client-certificate refusals arrive after the client's handshake ends.
            return Err(std::io::Error::other("closed without an answer"));
        }
        Ok(Exchange {
            leaf,
            version,
            answer: String::from_utf8_lossy(&out).into_owned(),
        })
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn refused(sc: &Sidecar, reason: &str) -> u64 {
    sc.rt
        .metrics
        .connections_refused
        .with_label_values(&["public", reason])
        .get()
}

/// Waits, within `PATIENCE`, for the refusal count to reach `want`, and fails
/// if it goes past it.
async fn refused_reaches(sc: &Sidecar, reason: &str, want: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let now = refused(sc, reason);
        assert!(now <= want, "{now} {reason} refusals, expected {want}");
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} {reason} refusals, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn rust_client_speaks_tls13_and_tls12_with_http11() {
    let pki = Pki::new();
    let first = pki.server("first", "first");
    install(&pki, &first);
    let sc = Sidecar::start(&config(&pki, None, "off"), &[]).await;
    let ca_file = pki.ca_file();

    let x = get(sc.addr, client_config(&[&ca_file], None, BOTH))
        .await
        .unwrap();
    assert_eq!(x.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(x.leaf, first.der);
    assert!(x.answer.starts_with("HTTP/1.1 404"), "{}", x.answer);
    assert!(x.answer.contains(r#""reason":"not_found""#), "{}", x.answer);

    let x = get(
        sc.addr,
        client_config(&[&ca_file], None, &[&rustls::version::TLS12]),
    )
    .await
    .unwrap();
    assert_eq!(x.version, rustls::ProtocolVersion::TLSv1_2);
    assert!(x.answer.starts_with("HTTP/1.1 404"), "{}", x.answer);

    // A client that does not trust the CA gets no answer.
    let other = ca("some other CA");
    std::fs::write(pki.path("other-ca.pem"), other.pem()).unwrap();
    assert!(get(
        sc.addr,
        client_config(&[&pki.path("other-ca.pem")], None, BOTH)
    )
    .await
    .is_err());
    // The sidecar's expiry gauge shows the served certificate's notAfter.
    let expiry = sc
        .rt
        .metrics
        .ops
        .tls_cert_expiry
        .with_label_values(&["public"])
        .get();
    assert_eq!(Some(expiry), bsk_sidecar::tls::not_after(&first.der));
}

#[tokio::test]
async fn curl_and_openssl_s_client_on_loopback() {
    let pki = Pki::new();
    install(&pki, &pki.server("first", "first"));
    let sc = Sidecar::start(&config(&pki, None, "off"), &[]).await;
    let port = sc.addr.port();
    let ca = pki.ca_file();
    let (ca_s, port_s) = (ca.display().to_string(), port.to_string());

    let curl = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", &ca_s])
            .args(["--resolve", &format!("localhost:{port_s}:127.0.0.1")])
            .arg(format!("https://localhost:{port_s}/nothing"))
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(body.contains(r#""reason":"not_found""#), "{body}");

    // Plain curl without the CA refuses the certificate (exit 60).
    let port_s = port.to_string();
    let untrusted = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("localhost:{port_s}:127.0.0.1"))
            .arg(format!("https://localhost:{port_s}/nothing"))
            .env("CURL_CA_BUNDLE", "/dev/null")
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    assert!(!untrusted.status.success());

    for version in ["-tls1_3", "-tls1_2"] {
        let ca_s = ca.display().to_string();
        let out = tokio::task::spawn_blocking(move || {
            // stdin stays open a moment after the request, so s_client reads the answer.
            let script = format!(
                "(printf 'GET /nothing HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n'; sleep 1) | \
                 timeout 10 openssl s_client -connect 127.0.0.1:{port} -servername localhost \
                 -verify_return_error {version} -CAfile {ca_s}"
            );
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .expect("openssl runs")
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{version}: {text}"
        );
        assert!(text.contains("HTTP/1.1 404"), "{version}: {text}");
    }
    // TLS 1.1 is not offered at all.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "10",
                "openssl",
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-tls1_1",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no peer certificate available"), "{text}");
    assert!(!out.status.success());
}

#[tokio::test]
async fn plain_http_and_silent_clients_are_cut_off() {
    let pki = Pki::new();
    install(&pki, &pki.server("first", "first"));
    let sc = Sidecar::start(&config(&pki, None, "off"), &[]).await;

    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1"));
    assert_eq!(refused(&sc, "tls_handshake"), 1);

    // Connects and says nothing: closed at the handshake deadline (500ms).
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(refused(&sc, "tls_handshake_timeout"), 1);
}

#[tokio::test]
async fn mtls_accepts_its_ca_and_refuses_expired_wrong_ca_and_missing() {
    let pki = Pki::new();
    install(&pki, &pki.server("first", "first"));
    let clients_ca = ca("department clients CA");
    std::fs::write(pki.path("clients-ca.pem"), clients_ca.pem()).unwrap();
    let sc = Sidecar::start(&config(&pki, Some(&pki.path("clients-ca.pem")), "off"), &[]).await;
    let roots = [pki.ca_file()];
    let roots: Vec<&Path> = roots.iter().map(|p| p.as_path()).collect();

    let good = pki.client(&clients_ca, "portal", (2020, 2090));
    let x = get(sc.addr, client_config(&roots, Some(&good), BOTH))
        .await
        .unwrap();
    assert!(x.answer.starts_with("HTTP/1.1 404"), "{}", x.answer);
    let x = get(
        sc.addr,
        client_config(&roots, Some(&good), &[&rustls::version::TLS12]),
    )
    .await
    .unwrap();
    assert!(x.answer.starts_with("HTTP/1.1 404"), "{}", x.answer);

    let expired = pki.client(&clients_ca, "expired", (2020, 2021));
    let not_yet = pki.client(&clients_ca, "not-yet", (2099, 2100));
    let other_ca = ca("another CA");
    let wrong_ca = pki.client(&other_ca, "wrong-ca", (2020, 2090));
    for (what, c) in [
        ("expired", Some(&expired)),
        ("not yet valid", Some(&not_yet)),
        ("wrong CA", Some(&wrong_ca)),
        ("no certificate", None),
    ] {
        for versions in [BOTH, &[&rustls::version::TLS12][..]] {
            let r = get(sc.addr, client_config(&roots, c, versions)).await;
            assert!(
                r.is_err(),
                "{what} was served: {}",
                r.map(|x| x.answer).unwrap_or_default()
            );
        }
    }
    // The server counts a refusal after its alert is on the wire, so the
    // client can see the alert first.
    refused_reaches(&sc, "tls_handshake", 8).await;

    // curl with and without the client certificate.
    let (ca_s, port) = (pki.ca_file().display().to_string(), sc.addr.port());
    let (cert_s, key_s) = (
        good.cert.display().to_string(),
        good.key.display().to_string(),
    );
    let with = tokio::task::spawn_blocking(move || {
        let base = |cmd: &mut Command| {
            cmd.args(["-sS", "--max-time", "10", "--cacert", &ca_s])
                .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
                .arg(format!("https://localhost:{port}/nothing"));
        };
        let mut with = Command::new("curl");
        base(&mut with);
        with.args(["--cert", &cert_s, "--key", &key_s]);
        let mut without = Command::new("curl");
        base(&mut without);
        (with.output().unwrap(), without.output().unwrap())
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&with.0.stdout).contains("not_found"),
        "{}",
        String::from_utf8_lossy(&with.0.stderr)
    );
    assert!(
        !with.1.status.success() || !String::from_utf8_lossy(&with.1.stdout).contains("not_found")
    );
}

async fn wait_for_leaf(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    want: &CertificateDer<'_>,
) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(x) = get(addr, config.clone()).await {
            if x.leaf == *want {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificate_file_change_reloads_and_a_broken_one_keeps_the_last_good() {
    let pki = Pki::new();
    install(&pki, &pki.server("first", "first"));
    let sc = Sidecar::start(&config(&pki, None, "200ms"), &[]).await;
    let client = client_config(&[&pki.ca_file()], None, BOTH);
    let reloads = |outcome: &str| {
        sc.rt
            .metrics
            .ops
            .tls_reloads
            .with_label_values(&["public", outcome])
            .get()
    };

    let second = pki.server("second", "second");
    install(&pki, &second);
    wait_for_leaf(sc.addr, &client, &second.der).await;
    assert!(reloads("ok") >= 1);
    assert_eq!(
        Some(
            sc.rt
                .metrics
                .ops
                .tls_cert_expiry
                .with_label_values(&["public"])
                .get()
        ),
        bsk_sidecar::tls::not_after(&second.der)
    );

    // A broken certificate: refused, counted, and the second one is still served.
    std::fs::write(
        pki.path("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while reloads("error") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "broken certificate never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let x = get(sc.addr, client.clone()).await.unwrap();
    assert_eq!(x.leaf, second.der);
    // A key that does not match the certificate is refused the same way.
    let third = pki.server("third", "third");
    std::fs::copy(&second.key, pki.path("server.key")).unwrap();
    std::fs::copy(&third.cert, pki.path("server.crt")).unwrap();
    let before = reloads("error");
    let deadline = std::time::Instant::now() + PATIENCE;
    while reloads("error") == before {
        assert!(
            std::time::Instant::now() < deadline,
            "mismatched key never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(sc.addr, client.clone()).await.unwrap().leaf, second.der);
    // Fixed: the third is served.
    install(&pki, &third);
    wait_for_leaf(sc.addr, &client, &third.der).await;
}

#[tokio::test]
async fn sighup_reload_rereads_certificates_even_when_the_config_is_refused() {
    let pki = Pki::new();
    install(&pki, &pki.server("first", "first"));
    let yaml = config(&pki, None, "off");
    let cfg_path = pki.path("sidecar.yaml");
    std::fs::write(&cfg_path, &yaml).unwrap();
    let settings = bsk_sidecar::config::load(&cfg_path).unwrap();
    let rt =
        bsk_sidecar::runtime::Runtime::new(settings, bsk_sidecar::metrics::Metrics::new()).unwrap();
    let bound = bsk_sidecar::server::bind(&rt).await.unwrap();
    let addr = bound.addr_of(&rt, "public").unwrap();
    let live = bsk_sidecar::reload::Live::new(rt);
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(bsk_sidecar::server::serve_live(
        live.clone(),
        bound,
        async {
            let _ = stop_rx.await;
        },
    ));
    let client = client_config(&[&pki.ca_file()], None, BOTH);

    // The files change; with `watch: off` only a reload notices.
    let second = pki.server("second", "second");
    install(&pki, &second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(get(addr, client.clone()).await.unwrap().leaf, second.der);
    bsk_sidecar::reload::reload_file(&live, &cfg_path)
        .await
        .unwrap();
    assert_eq!(get(addr, client.clone()).await.unwrap().leaf, second.der);

    // A refused config still re-reads the running listeners' certificates.
    let third = pki.server("third", "third");
    install(&pki, &third);
    std::fs::write(&cfg_path, format!("{yaml}\nbogus_key: 1\n")).unwrap();
    assert!(bsk_sidecar::reload::reload_file(&live, &cfg_path)
        .await
        .is_err());
    assert_eq!(get(addr, client.clone()).await.unwrap().leaf, third.der);

    // A config pointing at a certificate that does not load is refused whole.
    std::fs::write(&cfg_path, yaml.replace("server.crt", "missing.crt")).unwrap();
    assert!(bsk_sidecar::reload::reload_file(&live, &cfg_path)
        .await
        .is_err());
    assert_eq!(get(addr, client.clone()).await.unwrap().leaf, third.der);

    let _ = stop.send(());
    serving.await.unwrap();
}

#[tokio::test]
async fn proxy_protocol_header_comes_before_the_tls_handshake() {
    let pki = Pki::new();
    install(&pki, &pki.server("first", "first"));
    let yaml = config(&pki, None, "off").replace(
        "    tls: {",
        "    trusted_proxies: [127.0.0.2]\n    proxy_protocol: true\n    tls: {",
    );
    let sc = Sidecar::start(&yaml, &[]).await;
    let client = client_config(&[&pki.ca_file()], None, BOTH);

    // The load balancer (127.0.0.2) sends the PROXY header in clear, then TLS follows.
    let tcp = support::connect_from(support::LOCAL2, sc.addr)
        .await
        .unwrap();
    let mut tcp = tcp;
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n")
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");

    // The same hop without the header: closed before any TLS.
    let tcp = support::connect_from(support::LOCAL2, sc.addr)
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let r = tokio::time::timeout(PATIENCE, TlsConnector::from(client).connect(name, tcp)).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "handshake without a PROXY header succeeded"
    );
    assert_eq!(
        sc.rt
            .metrics
            .connections_refused
            .with_label_values(&["public", "proxy_header"])
            .get(),
        1
    );
}

/// A client certificate with `cn`, optionally a DNS SAN, issued by `issuer`.
fn client_named(
    pki: &Pki,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    file: &str,
    cn: &str,
    san: &[&str],
) -> Issued {
    let mut p =
        CertificateParams::new(san.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(issuer, p, &pki.dir, file)
}

/// Base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as `spki_sha256` takes it.
fn spki_pin(issued: &Issued) -> String {
    use base64::Engine;
    use sha2::Digest;
    // From the private key (rcgen), independently of how the sidecar reads certificates.
    let key = KeyPair::from_pem(&std::fs::read_to_string(&issued.key).unwrap()).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki))
}

/// A sealed API-1 form POST to `path` over TLS with `client`'s certificate: the status.
async fn post_form(
    addr: SocketAddr,
    roots: &[&Path],
    client: &Issued,
    path: &str,
) -> (u16, String) {
    let body = support::form_body(
        "BSK",
        &support::aes_b64(
            support::SPEC_KEY,
            support::SPEC_IV,
            support::TICKET_PLAIN.as_bytes(),
        ),
    );
    let run = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client_config(roots, Some(client), BOTH))
            .connect(name, tcp)
            .await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(&body).await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let answer = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("in time")
        .expect("exchange");
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {answer}"));
    (status, answer)
}

#[tokio::test]
async fn a_peers_bound_certificate_cannot_send_as_another_peer() {
    let pki = Pki::new();
    install(&pki, &pki.server("srv", "srv"));
    let clients_ca = ca("department clients CA");
    std::fs::write(pki.path("clients-ca.pem"), clients_ca.pem()).unwrap();
    let dept_a = client_named(&pki, &clients_ca, "dept-a", "Dept-A", &[]);
    let dept_b = client_named(&pki, &clients_ca, "dept-b", "other", &["dept-b.example.in"]);
    // Same names as B, another key: passes the handshake and the name, not B's pin.
    let b_lookalike = client_named(
        &pki,
        &clients_ca,
        "b-lookalike",
        "other",
        &["dept-b.example.in"],
    );
    let app = support::Upstream::start(support::Behaviour::Echo).await;
    let key = r#"{ key: "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", iv: "V0ZMZO6WZ45KY2PL" }"#;
    let yaml = format!(
        r#"
admin: {{ listen: "off" }}
state: {{ dir: {state} }}
peers:
  dept_a:
    agid: BSK
    aes: {{ keys: [ {key} ] }}
    tls_client: {{ names: [dept-a] }}
  dept_b:
    agid: BSK
    aes: {{ keys: [ {key} ] }}
    tls_client: {{ names: [DEPT-B.example.in], spki_sha256: ["{pin}"] }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    tls: {{ cert: {cert}, key: {tls_key}, client_ca: {client_ca}, watch: off }}
    routes:
      - {{ path: /a/landing, from: dept_a, fresh: off, envelope: [form, aes], ip_check: false, upstream: "http://{app}/a" }}
      - {{ path: /b/landing, from: dept_b, fresh: off, envelope: [form, aes], ip_check: false, upstream: "http://{app}/b" }}
"#,
        state = pki.path("state").display(),
        pin = spki_pin(&dept_b),
        cert = pki.path("server.crt").display(),
        tls_key = pki.path("server.key").display(),
        client_ca = pki.path("clients-ca.pem").display(),
        app = app.addr,
    );
    let sc = Sidecar::start(&yaml, &[]).await;
    let roots = [pki.ca_file()];
    let roots: Vec<&Path> = roots.iter().map(|p| p.as_path()).collect();

    assert_eq!(
        post_form(sc.addr, &roots, &dept_a, "/a/landing").await.0,
        200
    );
    assert_eq!(
        post_form(sc.addr, &roots, &dept_b, "/b/landing").await.0,
        200
    );
    assert_eq!(app.count(), 2);
    for (who, cert, path) in [
        ("A as B", &dept_a, "/b/landing"),
        ("B as A", &dept_b, "/a/landing"),
        ("B's names, another key", &b_lookalike, "/b/landing"),
    ] {
        let (status, answer) = post_form(sc.addr, &roots, cert, path).await;
        assert_eq!(status, 403, "{who}: {answer}");
        assert!(
            answer.contains(r#""reason":"client_cert_denied""#),
            "{who}: {answer}"
        );
    }
    assert_eq!(app.count(), 2, "a refused request reached the application");

    // Binding a certificate on a listener that does not ask for one is a config error.
    let no_mtls = yaml.replace(
        &format!(", client_ca: {}", pki.path("clients-ca.pem").display()),
        "",
    );
    let errs =
        bsk_sidecar::config::from_yaml(&no_mtls, "t.yaml", Path::new(".")).expect_err("refused");
    assert!(
        errs.iter().any(|e| e.path == "listeners[0].tls.client_ca"),
        "{errs:?}"
    );
}
