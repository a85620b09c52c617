//! Config validation: what a sysadmin's mistakes produce.

use std::path::Path;

use super::*;

const KEY: &str = "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W";
const IV: &str = "V0ZMZO6WZ45KY2PL";

fn good() -> String {
    format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
state: {{ dir: /tmp/bsk-state }}
peers:
  bsk:
    agid: BSK
    passcode: "376423"
    jwt: {{ secret: "jwt-secret-for-tests-0123456789abcdef", algorithms: [HS256], require_exp: false, leeway: 30s }}
    aes:
      keys:
        - {{ key: "{KEY}", iv: "{IV}" }}
    allow: [127.0.0.2/32, "::1"]
    rate: {{ per_second: 50, burst: 100 }}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - path: /bsk/landing
        from: bsk
        envelope: [form, aes]
        ip_check: false
        upstream: http://127.0.0.1:8080/bsk/landing
      - path: /bsk/status
        from: bsk
        envelope: [token, jwt]
        upstream: http://127.0.0.1:8080/bsk/status
        response: {{ mode: seal, wrap: {{ status: S, statusCode: 200 }} }}
        max_body: 64KiB
"#
    )
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    from_yaml(yaml, "test.yaml", Path::new(".")).expect_err("config should be refused")
}

#[test]
fn the_documented_shape_validates() {
    let s = from_yaml(&good(), "test.yaml", Path::new(".")).unwrap();
    assert_eq!(s.listeners.len(), 1);
    let routes = &s.listeners[0].routes;
    assert_eq!(routes[0].path, "/bsk/landing");
    assert!(!routes[0].ip_check);
    assert_eq!(routes[1].max_body, 64 * 1024);
    assert_eq!(
        routes[0].max_body,
        1024 * 1024,
        "default body limit applies"
    );
    // One route skips the address check, so the listener cannot check at accept.
    assert!(s.listeners[0].accept_allowlist().is_none());
    assert!(s.describe().contains("/bsk/status from bsk [token,jwt]"));
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let s = from_yaml(&good(), "test.yaml", Path::new(".")).unwrap();
    let dump = format!("{s:?}");
    for secret in [KEY, IV, "376423", "jwt-secret-for-tests-0123456789abcdef"] {
        assert!(!dump.contains(secret), "{secret} leaked into Debug");
    }
}

#[test]
fn unknown_key_is_an_error_with_path_and_line() {
    let yaml = good().replace("    agid: BSK\n", "    agid: BSK\n    agidd: BSK\n");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!(e.path, "peers.bsk.agidd");
    assert!(e.message.contains("unknown field `agidd`"), "{e}");
    assert_eq!(e.line, Some(7));
    assert!(
        e.to_string()
            .starts_with("test.yaml:7: peers.bsk.agidd: unknown field"),
        "{e}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = good()
        .replace(KEY, "short-key")
        .replace(IV, "short-iv")
        .replace("127.0.0.2/32", "127.0.0.2/40")
        .replace(
            "        from: bsk\n        envelope: [token, jwt]",
            "        from: nobody\n        envelope: [token, jwt]",
        )
        .replace("path: /bsk/status", "path: /bsk/landing");
    let errs = errors(&yaml);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"peers.bsk.aes.keys[0].key"), "{errs:#?}");
    assert!(paths.contains(&"peers.bsk.aes.keys[0].iv"), "{errs:#?}");
    assert!(paths.contains(&"peers.bsk.allow[0]"), "{errs:#?}");
    assert!(
        paths.contains(&"listeners[0].routes[1].path"),
        "duplicate path: {errs:#?}"
    );
    // Errors name the problem in words a sysadmin can act on.
    let key_err = errs
        .iter()
        .find(|e| e.path == "peers.bsk.aes.keys[0].key")
        .unwrap();
    assert!(key_err.message.contains("32 characters"));
}

#[test]
fn a_peer_name_the_application_header_cannot_carry_is_refused() {
    // The name reaches the application as `X-BSK-Peer`; a control character in it would
    // otherwise fail every forwarded request of the peer.
    let yaml = good()
        .replace("  bsk:\n", "  \"bsk\\t\\a\":\n")
        .replace("from: bsk", "from: \"bsk\\t\\a\"");
    let errs = errors(&yaml);
    assert!(
        errs.iter()
            .any(|e| e.path == "peers.bsk\t\u{7}" && e.message.contains("X-BSK-Peer")),
        "{errs:?}"
    );
    // Tabs, spaces and letters beyond ASCII are carried as they are.
    let yaml = good()
        .replace("  bsk:\n", "  \"বিএসকে portal\t1\":\n")
        .replace("from: bsk", "from: \"বিএসকে portal\t1\"");
    let s = from_yaml(&yaml, "test.yaml", Path::new(".")).unwrap();
    let peer = &s.peers["বিএসকে portal\t1"];
    assert_eq!(peer.header.as_bytes(), "বিএসকে portal\t1".as_bytes());
}

#[test]
fn unknown_peer_in_route_is_named() {
    let yaml = good().replace(
        "        from: bsk\n        envelope: [token, jwt]",
        "        from: wbsedcl\n        envelope: [token, jwt]",
    );
    let errs = errors(&yaml);
    assert!(errs
        .iter()
        .any(|e| e.path == "listeners[0].routes[1].from" && e.message.contains("wbsedcl")));
}

#[test]
fn unreadable_secret_file_and_missing_env_are_errors() {
    let yaml = good()
        .replace(
            "passcode: \"376423\"",
            "passcode: { file: /nonexistent/bsk.pass }",
        )
        .replace(
            "secret: \"jwt-secret-for-tests-0123456789abcdef\"",
            "secret: { env: BSK_TEST_SURELY_UNSET_VAR }",
        );
    let errs = errors(&yaml);
    assert!(errs
        .iter()
        .any(|e| e.path == "peers.bsk.passcode" && e.message.contains("/nonexistent/bsk.pass")));
    assert!(errs.iter().any(
        |e| e.path == "peers.bsk.jwt.secret" && e.message.contains("BSK_TEST_SURELY_UNSET_VAR")
    ));
}

#[test]
fn secret_file_is_read_without_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pass"), "376423\n").unwrap();
    let yaml = good().replace("passcode: \"376423\"", "passcode: { file: pass }");
    let s = from_yaml(&yaml, "t.yaml", dir.path()).unwrap();
    assert!(s.peers["bsk"]
        .keys
        .passcode
        .as_ref()
        .unwrap()
        .matches(b"376423"));
}

#[test]
fn address_check_needs_an_allowlist_or_an_explicit_relaxation() {
    let yaml = good().replace("    allow: [127.0.0.2/32, \"::1\"]\n", "");
    let errs = errors(&yaml);
    assert!(
        errs.iter()
            .any(|e| e.path == "listeners[0].routes[1].ip_check"),
        "{errs:#?}"
    );
}

#[test]
fn alg_none_cannot_be_configured() {
    let yaml = good().replace("algorithms: [HS256]", "algorithms: [none]");
    let errs = errors(&yaml);
    assert!(errs.iter().any(|e| e.path == "peers.bsk.jwt.algorithms[0]"));
}

#[test]
fn sizes_and_durations_parse() {
    use raw::{RawBytes, RawDuration};
    assert_eq!(
        values::parse_bytes(&RawBytes::Text("1MiB".into())).unwrap(),
        1 << 20
    );
    assert_eq!(values::parse_bytes(&RawBytes::Count(512)).unwrap(), 512);
    assert!(values::parse_bytes(&RawBytes::Text("1 parsec".into())).is_err());
    assert_eq!(
        values::parse_duration(&RawDuration::Text("10m".into())).unwrap(),
        std::time::Duration::from_secs(600)
    );
    assert!(values::parse_duration(&RawDuration::Text("soon".into())).is_err());
}

#[test]
fn admin_access_defaults_closed_and_reports_bad_values() {
    let s = from_yaml(&good(), "test.yaml", Path::new(".")).unwrap();
    let a = &s.admin_access;
    assert!(a.token.is_none());
    assert_eq!(a.metrics, crate::guard::admin_access::MetricsAccess::Token);
    assert_eq!(a.max_connections, 16);
    assert!(s.describe().contains("no admin.token"), "{}", s.describe());

    let yaml = good().replace(
        "admin: { listen: 127.0.0.1:0 }",
        r#"admin: { token: "t0ken", metrics: open, max_connections: 4 }"#,
    );
    let s = from_yaml(&yaml, "test.yaml", Path::new(".")).unwrap();
    assert_eq!(s.admin, Some("127.0.0.1:9901".parse().unwrap()));
    assert!(s
        .admin_access
        .token
        .as_ref()
        .is_some_and(|t| t.matches(b"t0ken")));
    let d = s.describe();
    assert!(
        d.contains("protected by admin.token") && d.contains("metrics=open"),
        "{d}"
    );
    assert!(!d.contains("t0ken"), "{d}");

    let yaml = good().replace(
        "admin: { listen: 127.0.0.1:0 }",
        r#"admin: { listen: 127.0.0.1:0, token: "", metrics: public, max_connections: 0 }"#,
    );
    let paths: Vec<String> = errors(&yaml).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        ["admin.token", "admin.metrics", "admin.max_connections"]
    );
}

#[test]
fn callers_belong_to_egress_listeners_only() {
    let yaml = good().replace(
        "  - name: public\n    listen: 127.0.0.1:0\n",
        "  - name: public\n    listen: 127.0.0.1:0\n    callers: [127.0.0.1/32]\n    caller_token: \"x\"\n",
    );
    let paths: Vec<String> = errors(&yaml).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["listeners[0].callers", "listeners[0].caller_token"]);

    let egress = |extra: &str| {
        format!(
            "{}  - name: egress\n    listen: 127.0.0.1:0\n{extra}    routes:\n      - {{ path: /push, to: bsk, remote: /push, envelope: [token, jwt] }}\n",
            good().replace("    rate: {", "    url: https://bsk.example/api\n    rate: {")
        )
    };
    let s = from_yaml(&egress(""), "test.yaml", Path::new(".")).unwrap();
    assert_eq!(
        s.listeners[1].callers.to_string(),
        "[127.0.0.1/32, ::1/128]"
    );
    assert!(s.describe().contains("callers=[127.0.0.1/32, ::1/128]"));
    let s = from_yaml(
        &egress("    callers: [10.0.0.0/8]\n    caller_token: \"app-token\"\n"),
        "test.yaml",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        s.listeners[1].callers.to_string(),
        "[10.0.0.0/8] caller_token"
    );
    assert!(!s.describe().contains("app-token"));
    let paths: Vec<String> = errors(&egress("    callers: [app.local, 127.0.0.1]\n"))
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(paths, ["listeners[1].callers[0]"]);
}

#[test]
fn a_short_jwt_secret_is_refused_unless_explicitly_allowed() {
    let short = good().replace("jwt-secret-for-tests-0123456789abcdef", "sixteen-byte-key");
    let errs = errors(&short);
    assert!(
        errs.iter()
            .any(|e| e.path == "peers.bsk.jwt.secret" && e.message.contains("16 bytes")),
        "{errs:?}"
    );
    let allowed = short.replace("leeway: 30s }", "leeway: 30s, allow_short_secret: true }");
    let s = from_yaml(&allowed, "test.yaml", Path::new(".")).unwrap();
    assert!(s
        .relaxations()
        .iter()
        .any(|w| w.contains("peer bsk: JWT secret shorter")));
}

#[test]
fn every_ingress_route_is_fresh_and_replay_protected_by_default() {
    let s = from_yaml(&good(), "test.yaml", Path::new(".")).unwrap();
    for r in &s.listeners[0].routes {
        assert!(r.fresh.is_some() && r.replay, "{} unprotected", r.path);
        assert!(r.forward_headers.is_empty() && !r.pass_query, "{}", r.path);
    }
    assert!(s.relaxations().is_empty(), "{:?}", s.relaxations());
    assert_eq!(
        s.peers["bsk"].max_token_lifetime,
        std::time::Duration::from_secs(3600)
    );
    let off = good().replace(
        "        ip_check: false\n",
        "        ip_check: false\n        fresh: \"off\"\n",
    );
    let s = from_yaml(&off, "test.yaml", Path::new(".")).unwrap();
    assert!(s.listeners[0].routes[0].fresh.is_none());
    assert_eq!(s.relaxations().len(), 1, "{:?}", s.relaxations());
}

#[test]
fn forward_headers_cannot_name_what_the_sidecar_owns() {
    for (name, why) in [
        ("X-BSK-Peer", "set by the sidecar"),
        ("x-forwarded-for", "set by the sidecar"),
        ("Authorization", "set by the sidecar"),
        ("X_BSK_Peer", "underscore"),
    ] {
        let yaml = good().replace(
            "        max_body: 64KiB\n",
            &format!("        max_body: 64KiB\n        forward_headers: [{name}]\n"),
        );
        let errs = errors(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.path.ends_with("forward_headers[0]") && e.message.contains(why)),
            "{name}: {errs:?}"
        );
    }
}

#[test]
fn tls_client_needs_names_or_pins_that_parse() {
    let yaml = good().replace(
        "    rate: { per_second: 50, burst: 100 }\n",
        "    rate: { per_second: 50, burst: 100 }\n    tls_client: { names: [], spki_sha256: [\"c2hvcnQ=\"] }\n",
    );
    let errs = errors(&yaml);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["peers.bsk.tls_client.spki_sha256[0]"], "{errs:?}");
    let yaml = good().replace(
        "    rate: { per_second: 50, burst: 100 }\n",
        "    rate: { per_second: 50, burst: 100 }\n    tls_client: {}\n",
    );
    let errs = errors(&yaml);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["peers.bsk.tls_client"], "{errs:?}");
}

#[test]
fn state_backend_is_embedded_by_default_or_a_redis_url() {
    let s = from_yaml(&good(), "test.yaml", Path::new(".")).unwrap();
    assert!(s.redis.is_none());
    let with = |backend: &str| {
        good().replace(
            "state: { dir: /tmp/bsk-state }",
            &format!("state: {{ dir: /tmp/bsk-state, backend: {backend} }}"),
        )
    };
    assert!(from_yaml(&with("embedded"), "t", Path::new("."))
        .unwrap()
        .redis
        .is_none());
    let s = from_yaml(
        &with(r#"{ redis: "rediss://:pw@cache.internal:6380/2", replicas: 3, on_redis_down: closed }"#),
        "t",
        Path::new("."),
    )
    .unwrap();
    let r = s.redis.as_ref().unwrap();
    assert_eq!(
        (r.replicas, r.on_down),
        (3, crate::fleet::OnRedisDown::Closed)
    );
    assert!(
        !format!("{s:?}").contains(":pw@"),
        "the URL's password leaked"
    );
    assert!(s.describe().contains("shared   redis"));
    for (bad, path) in [
        (r#"{ redis: "http://cache:6379" }"#, "state.backend.redis"),
        (r#"{ replicas: 2 }"#, "state.backend.redis"),
        ("sqlite", "state.backend"),
        (
            r#"{ redis: "redis://c/0", replicas: 0 }"#,
            "state.backend.replicas",
        ),
        (
            r#"{ redis: "redis://c/0", on_redis_down: ignore }"#,
            "state.backend.on_redis_down",
        ),
    ] {
        let errs = errors(&with(bad));
        assert!(errs.iter().any(|e| e.path == path), "{bad}: {errs:?}");
    }
}

#[test]
fn an_unknown_value_of_a_closed_set_is_named_with_the_allowed_ones_among_every_problem() {
    let yaml = good()
        .replace(
            "admin: { listen: 127.0.0.1:0 }",
            "admin: { listen: 127.0.0.1:0, metrics: public }",
        )
        .replace("algorithms: [HS256]", "algorithms: [HS256, RS256]")
        .replace("envelope: [form, aes]", "envelope: [form, AES]")
        .replace("response: { mode: seal,", "response: { mode: sealed,")
        .replace(
            "        max_body: 64KiB\n",
            "        max_body: 64KiB\n        method: FETCH\n        schema: api9\n        schema_mode: strict\n        query: keep\n",
        )
        + "limits: { max_in_flight: 0, workers: 0 }\n";
    let errs = errors(&yaml);
    let at = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .map(|e| e.message.clone())
            .unwrap_or_else(|| panic!("nothing at {path}: {errs:#?}"))
    };
    assert_eq!(
        at("admin.metrics"),
        "unknown variant `public`, expected `token` or `open`"
    );
    assert_eq!(
        at("peers.bsk.jwt.algorithms[1]"),
        "unknown variant `RS256`, expected one of `HS256`, `HS384`, `HS512`"
    );
    assert_eq!(
        at("listeners[0].routes[0].envelope[1]"),
        "unknown variant `AES`, expected one of `form`, `aes`, `token`, `bearer`, `jwt`, `passcode`"
    );
    assert_eq!(
        at("listeners[0].routes[1].response.mode"),
        "unknown variant `sealed`, expected `pass` or `seal`"
    );
    assert_eq!(
        at("listeners[0].routes[1].method"),
        "unknown variant `FETCH`, expected one of `POST`, `GET`, `PUT`"
    );
    assert!(at("listeners[0].routes[1].schema").contains("`api9`, expected one of `api1`"));
    assert_eq!(
        at("listeners[0].routes[1].schema_mode"),
        "unknown variant `strict`, expected `enforce` or `warn`"
    );
    assert_eq!(
        at("listeners[0].routes[1].query"),
        "unknown variant `keep`, expected `drop` or `pass`"
    );
    // A problem that is no spelling is reported in the same run.
    assert_eq!(at("limits.max_in_flight"), "must be at least 1");
    assert_eq!(
        at("limits.workers"),
        "must be at least 1 (leave it out for one per core)"
    );
    // The peer's good algorithm was kept: no "at least one algorithm" on top.
    assert!(!errs.iter().any(|e| e.path == "peers.bsk.jwt.algorithms"));
}

#[test]
fn workers_are_one_per_core_unless_written_and_check_shows_them() {
    let s = from_yaml(&good(), "test.yaml", Path::new(".")).unwrap();
    assert_eq!(s.limits.workers, None);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(s
        .describe()
        .contains(&format!("workers  {cores} (one per core)")));
    let yaml = good() + "limits: { workers: 3 }\n";
    let s = from_yaml(&yaml, "test.yaml", Path::new(".")).unwrap();
    assert_eq!(s.limits.workers.map(|n| n.get()), Some(3));
    assert!(s.describe().contains("workers  3 (limits.workers)"));
}

#[test]
fn route_methods_are_case_insensitive_and_post_by_default() {
    let s = from_yaml(&good(), "test.yaml", Path::new(".")).unwrap();
    assert_eq!(s.listeners[0].routes[0].method, http::Method::POST);
    for (written, method) in [
        ("GET", http::Method::GET),
        ("get", http::Method::GET),
        ("Put", http::Method::PUT),
        ("post", http::Method::POST),
    ] {
        let yaml = good().replace(
            "        max_body: 64KiB\n",
            &format!("        max_body: 64KiB\n        method: {written}\n"),
        );
        let s = from_yaml(&yaml, "test.yaml", Path::new(".")).unwrap();
        assert_eq!(s.listeners[0].routes[1].method, method, "{written}");
    }
}

#[test]
fn every_spelling_of_each_closed_set_validates() {
    let route = |extra: &str| {
        good().replace(
            "        max_body: 64KiB\n",
            &format!("        max_body: 64KiB\n{extra}"),
        )
    };
    for api in [
        "api1", "api2", "api3", "api4", "api5a", "api5b", "api6", "api7",
    ] {
        for mode in ["enforce", "warn"] {
            let yaml = route(&format!(
                "        schema: {api}\n        schema_mode: {mode}\n"
            ));
            let s = from_yaml(&yaml, "t", Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"));
            let (got, got_mode) = s.listeners[0].routes[1].schema.unwrap();
            assert_eq!(
                (got.name(), format!("{got_mode:?}").to_lowercase()),
                (api, mode.to_string())
            );
        }
    }
    for metrics in ["token", "open"] {
        let yaml = good().replace(
            "admin: { listen: 127.0.0.1:0 }",
            &format!("admin: {{ listen: 127.0.0.1:0, metrics: {metrics} }}"),
        );
        let s = from_yaml(&yaml, "t", Path::new(".")).unwrap();
        assert_eq!(s.admin_access.metrics.name(), metrics);
    }
    for alg in ["HS256", "HS384", "HS512"] {
        let yaml = good().replace("algorithms: [HS256]", &format!("algorithms: [{alg}]"));
        let s = from_yaml(&yaml, "t", Path::new(".")).unwrap();
        let jwt = s.peers["bsk"].keys.jwt.as_ref().unwrap();
        assert_eq!(format!("{:?}", jwt.algorithms), format!("[{alg}]"));
    }
    for (query, pass) in [("drop", false), ("pass", true)] {
        let s = from_yaml(
            &route(&format!("        query: {query}\n")),
            "t",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.listeners[0].routes[1].pass_query, pass, "{query}");
    }
    let yaml = good().replace(
        "response: { mode: seal, wrap: { status: S, statusCode: 200 } }",
        "response: { mode: pass }",
    );
    let s = from_yaml(&yaml, "t", Path::new(".")).unwrap();
    assert!(matches!(
        s.listeners[0].routes[1].response,
        ResponseMode::Pass
    ));
}

#[test]
fn state_backend_postgres_is_a_url_with_tls_unless_it_says_otherwise() {
    let with = |backend: &str| {
        good().replace(
            "state: { dir: /tmp/bsk-state }",
            &format!("state: {{ dir: /tmp/bsk-state, backend: {backend} }}"),
        )
    };
    let s = from_yaml(
        &with(r#"{ postgres: "postgres://bsk:s3cret@db.internal:5432/bsk" }"#),
        "t",
        Path::new("."),
    )
    .unwrap();
    let pg = s.postgres.as_ref().unwrap();
    assert!(s.redis.is_none(), "postgres alone needs no redis");
    assert!(!pg.tls_disabled());
    assert!(!format!("{s:?}").contains("s3cret"), "the password leaked");
    assert!(!s.describe().contains("s3cret"));
    assert!(
        s.describe().contains("shared   postgres"),
        "{}",
        s.describe()
    );
    assert!(s.describe().contains("tls=require"));
    assert!(s.relaxations().is_empty());
    // Both engines at once: each keeps its part.
    let s = from_yaml(
        &with(r#"{ redis: "redis://c/0", postgres: "postgres://db/bsk?sslmode=require" }"#),
        "t",
        Path::new("."),
    )
    .unwrap();
    assert!(s.redis.is_some() && s.postgres.is_some());
    // Plain text is allowed, and said.
    let s = from_yaml(
        &with(r#"{ postgres: "postgres://db/bsk?sslmode=disable" }"#),
        "t",
        Path::new("."),
    )
    .unwrap();
    assert!(s
        .relaxations()
        .iter()
        .any(|r| r.contains("sslmode=disable")));
    for bad in [
        r#"{ postgres: "mysql://db/bsk" }"#,
        r#"{ postgres: "postgres://db/bsk?sslmode=prefer" }"#,
        r#"{ postgres: "postgres://db:notaport/bsk" }"#,
    ] {
        let errs = errors(&with(bad));
        assert!(
            errs.iter().any(|e| e.path == "state.backend.postgres"),
            "{bad}: {errs:?}"
        );
    }
}
