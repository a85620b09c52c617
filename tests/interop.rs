//! Interoperability with code we did not write: the spec's own Node, Java and PHP AES samples
//! (section 15, run by the programs in `tests/interop/`) and PyJWT.
//!
//! Every peer makes exactly the library calls its sample makes. For each peer and payload:
//! what the peer encrypts, the sidecar opens to the same bytes (library and `bsk-sidecar open`)
//! and it is the very ciphertext the sidecar produces (CBC with a static IV is deterministic);
//! what the sidecar seals (library and `bsk-sidecar seal`), the peer decrypts to the same bytes.
//! PyJWT's HS256 tokens go through `jwt::verify` and `open --envelope bearer,jwt`, and PyJWT
//! verifies what `seal --envelope token,jwt` / `bearer,jwt` make.
//!
//! The peers' tools come from `.ci/install-interop-deps`. Under `CI=true` a missing tool fails
//! the test; elsewhere a test whose optional tool (php, commons-codec, PyJWT) is missing says so
//! on stderr and returns. Node and Java are always on the machine and always required.

mod support;

use support::in_ci;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bsk_sidecar::envelope::aes::{self, AesKey};
use bsk_sidecar::envelope::jwt::{self, JwtKey};
use bsk_sidecar::envelope::{Failure, TokenProblem};
use bsk_sidecar::secret::Secret;

// The spec's published test key and IV, and NOTES.md's corrected vector.
const SPEC_KEY: &str = "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W";
const SPEC_IV: &str = "V0ZMZO6WZ45KY2PL";
const SPEC_PLAIN: &str = r#"{"userid":"8527419636","ticketno":"20221202153322882","citizenmobile":"9963258963","citizenname":"Anupam Ghosh"}"#;
const SPEC_CIPHER: &str = "m4p3CxxkyshZk6hQdSi509Uu3Gn8i4MXIz/uqgSl40FfH0Hv7M/ThZj3YnAiVLdmuQ4DdGEPVLYtOihNsC2c59tkK97qagxo9+rX6hWJem/AilzVNBTsN206liJKiAaoFAKfmaxFAFo/UmGTrVExKI428RouVxqyechhX0OyIDg=";

// A second department's key, in `bsk-sidecar keygen`'s style, so nothing depends on the spec key.
const OTHER_KEY: &str = "Q7M2X9K4B8R1T6W3Z5N0P2L7C4V9H8J1";
const OTHER_IV: &str = "D3F6G9J2K5M8N1P4";

// HS256 secrets of at least 32 bytes (PyJWT warns below the hash size).
const JWT_SECRET: &str = "interop-jwt-secret-0123456789abcdefghij";
const OTHER_JWT_SECRET: &str = "another-department-secret-9876543210zyxw";
const PASSCODE: &str = "376423";

const DEFAULT_JAR: &str = "/usr/share/java/commons-codec.jar";

// ---------------------------------------------------------------- processes and tools

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

struct Ran {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` with `input` on stdin (written from a thread, so large inputs and outputs
/// cannot deadlock on full pipes).
fn run(mut cmd: Command, input: &[u8]) -> Ran {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A peer that fails early closes its stdin; its exit status tells, not the broken pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
    writer.join().expect("stdin writer thread");
    Ran {
        status: out.status,
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `Ok` if `program args` starts and exits 0.
fn probe(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Err(format!("`{program}` cannot be started: {e}")),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Whether a tool is usable. A missing tool panics under CI (or when `always_present`, for
/// tools every machine of this project has); otherwise the test is told to return early.
fn require(tool: &str, always_present: bool, found: Result<(), String>) -> bool {
    match found {
        Ok(()) => true,
        Err(why) if always_present || in_ci() => panic!(
            "interop test needs {tool}, which is missing: {why}\n\
             install it with `bash .ci/install-interop-deps`"
        ),
        Err(why) => {
            eprintln!(
                "SKIPPED: {tool} is missing ({why}); `bash .ci/install-interop-deps` installs it. \
                 Under CI=true this is a failure."
            );
            false
        }
    }
}

fn commons_codec_jar() -> PathBuf {
    std::env::var_os("COMMONS_CODEC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_JAR))
}

fn strip_one_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    bytes
}

/// A byte-level account of how `got` differs from `want`, for failure messages.
fn describe_diff(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let lo = at.saturating_sub(8);
    let window = |b: &[u8]| b[lo.min(b.len())..(at + 12).min(b.len())].to_vec();
    let mut s = format!(
        "got {} bytes, expected {}; first difference at byte {at}: got {:02x?} expected {:02x?} (from byte {lo})",
        got.len(),
        want.len(),
        window(got),
        window(want)
    );
    if got.len() <= 300 && want.len() <= 300 {
        s.push_str(&format!(
            "\n      got:      {:?}\n      expected: {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want)
        ));
    }
    s
}

// ---------------------------------------------------------------- the sidecar

fn sidecar(args: &[&str], input: &[u8]) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bsk-sidecar"));
    cmd.args(args).env("RUST_LOG", "warn");
    run(cmd, input)
}

fn aes_key(key: &str, iv: &str) -> AesKey {
    AesKey::new(key.as_bytes(), iv.as_bytes()).expect("32-byte key, 16-byte IV")
}

/// `bsk-sidecar seal --key K --iv IV`: the bare base64.
fn cli_seal_aes(key: &str, iv: &str, plain: &[u8]) -> Result<String, String> {
    let ran = sidecar(&["seal", "--key", key, "--iv", iv], plain);
    if !ran.ok() {
        return Err(format!("bsk-sidecar seal failed: {}", ran.stderr.trim()));
    }
    String::from_utf8(strip_one_newline(ran.stdout)).map_err(|e| format!("seal output: {e}"))
}

/// `bsk-sidecar open --key K --iv IV`: the plaintext (without the newline `open` adds).
fn cli_open_aes(key: &str, iv: &str, b64: &str) -> Result<Vec<u8>, String> {
    let ran = sidecar(&["open", "--key", key, "--iv", iv], b64.as_bytes());
    if ran.ok() {
        Ok(strip_one_newline(ran.stdout))
    } else {
        Err(format!("bsk-sidecar open failed: {}", ran.stderr.trim()))
    }
}

// ---------------------------------------------------------------- payloads

struct Case {
    name: String,
    key: &'static str,
    iv: &'static str,
    plain: Vec<u8>,
}

impl Case {
    fn new(name: &str, plain: impl Into<Vec<u8>>) -> Case {
        Case {
            name: name.to_owned(),
            key: SPEC_KEY,
            iv: SPEC_IV,
            plain: plain.into(),
        }
    }
}

/// A JSON object of exactly `target` bytes: a document value filled from `filler` (which must
/// hold no `"`, `\` or control characters), topped up with ASCII where a multi-byte character
/// would not fit.
fn sized_json(target: usize, filler: impl Iterator<Item = char>) -> Vec<u8> {
    let tail = r#""}"#;
    let mut s = String::from(r#"{"documentType":2,"documentValue":""#);
    let budget = target - tail.len();
    for ch in filler {
        if s.len() + ch.len_utf8() > budget {
            break;
        }
        s.push(ch);
    }
    while s.len() < budget {
        s.push('=');
    }
    s.push_str(tail);
    assert_eq!(s.len(), target);
    s.into_bytes()
}

/// Printable ASCII except `"` and `\`, over and over.
fn printable_ascii() -> impl Iterator<Item = char> {
    (' '..='~').filter(|c| !matches!(c, '"' | '\\')).cycle()
}

/// Bengali text (3-byte UTF-8 characters) mixed with ASCII digits and spaces.
fn bengali_text() -> impl Iterator<Item = char> {
    "অনুপম ঘোষ, পশ্চিম বর্ধমান ৭১৩৩০১; বাংলা সহায়তা কেন্দ্র 2022। "
        .chars()
        .collect::<Vec<_>>()
        .into_iter()
        .cycle()
}

/// A base64-looking document (API-4 `documentValue`), from a fixed xorshift sequence.
fn base64_text() -> impl Iterator<Item = char> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ALPHABET[(x % 64) as usize] as char
    })
}

fn digits_string(len: usize) -> Vec<u8> {
    let inner: String = ('0'..='9').cycle().take(len - 2).collect();
    format!("\"{inner}\"").into_bytes()
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        Case::new("spec vector", SPEC_PLAIN),
        Case::new(
            "ASCII JSON with escapes",
            &br#"{"userid":9054233544,"ticketNo":20221202153322882,"serviceCode":"AMD/003","remarks":"a+b/c=d \"quoted\" back\\slash\nline \u00e9\t"}"#[..],
        ),
        Case::new(
            "Bengali JSON",
            r#"{"name":"অনুপম ঘোষ","district":"পশ্চিম বর্ধমান","userid":"8527419636"}"#,
        ),
        Case::new(
            "JSON outside the BMP",
            r#"{"note":"ধন্যবাদ 🙏 𝔹𝕊𝕂"}"#,
        ),
        Case::new("empty object", "{}"),
        Case::new("1 byte", "1"),
        Case::new("15 bytes", digits_string(15)),
        Case::new("16 bytes (one block: a whole padding block follows)", digits_string(16)),
        Case::new("17 bytes", digits_string(17)),
        Case::new("1 KiB printable ASCII", sized_json(1024, printable_ascii())),
        Case::new("64 KiB Bengali", sized_json(64 * 1024, bengali_text())),
        Case::new("1 MiB base64 document", sized_json(1024 * 1024, base64_text())),
    ];
    let mut other = Case::new(
        "ASCII JSON under another department's key",
        r#"{"userid":"9054233544","ticketNo":"20240131120000123","applicationStatus":3}"#,
    );
    other.key = OTHER_KEY;
    other.iv = OTHER_IV;
    cases.push(other);
    cases
}

// ---------------------------------------------------------------- the AES peers

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    Node,
    Java,
    Php,
}

enum Req<'a> {
    Encrypt {
        key: &'a str,
        iv: &'a str,
        plain: &'a [u8],
    },
    Decrypt {
        key: &'a str,
        iv: &'a str,
        b64: &'a str,
    },
}

impl Peer {
    /// Whether this peer can run here (see [`require`]).
    fn available(self) -> bool {
        match self {
            Peer::Node => require("node", true, probe("node", &["--version"])),
            Peer::Java => {
                require("java", true, probe("java", &["-version"]))
                    && require(
                        "Apache commons-codec (Debian libcommons-codec-java)",
                        false,
                        if commons_codec_jar().is_file() {
                            Ok(())
                        } else {
                            Err(format!("{} not found", commons_codec_jar().display()))
                        },
                    )
            }
            Peer::Php => require(
                "php with openssl (Debian php-cli)",
                false,
                probe(
                    "php",
                    &["-r", "exit(function_exists('openssl_encrypt') ? 0 : 1);"],
                ),
            ),
        }
    }

    /// Answers each request: the base64 the peer printed, or the plaintext bytes it printed.
    fn run(self, reqs: &[Req<'_>]) -> Vec<Result<Vec<u8>, String>> {
        match self {
            Peer::Java => java_run("UTF-8", reqs),
            Peer::Node | Peer::Php => reqs.iter().map(|req| self.run_one(req)).collect(),
        }
    }

    fn run_one(self, req: &Req<'_>) -> Result<Vec<u8>, String> {
        let (program, script) = match self {
            Peer::Node => ("node", "peer.js"),
            Peer::Php => ("php", "peer.php"),
            Peer::Java => unreachable!("java runs in batches"),
        };
        let (mode, key, iv, input) = match req {
            Req::Encrypt { key, iv, plain } => ("encrypt", key, iv, *plain),
            Req::Decrypt { key, iv, b64 } => ("decrypt", key, iv, b64.as_bytes()),
        };
        let mut cmd = Command::new(program);
        cmd.arg(peer_dir().join(script)).args([mode, key, iv]);
        let ran = run(cmd, input);
        if ran.ok() {
            Ok(ran.stdout)
        } else {
            Err(format!(
                "{program} {script} {mode} exited with {}: {}",
                ran.status,
                ran.stderr.trim()
            ))
        }
    }
}

/// One JVM for many lines of `Peer.java batch`, with `file.encoding` as the platform default
/// charset. Returns each line's answer after `ok `, or the JVM's stderr for `err`.
fn java_batch(encoding: &str, lines: &[String]) -> Vec<Result<String, String>> {
    let mut cmd = Command::new("java");
    cmd.arg(format!("-Dfile.encoding={encoding}"))
        .args(["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp"])
        .arg(commons_codec_jar())
        .arg(peer_dir().join("Peer.java"))
        .arg("batch");
    let mut input = lines.join("\n").into_bytes();
    input.push(b'\n');
    let ran = run(cmd, &input);
    assert!(
        ran.ok(),
        "java Peer.java batch exited with {}: {}",
        ran.status,
        ran.stderr
    );
    let out = String::from_utf8(ran.stdout).expect("batch answers are ASCII");
    let answers: Vec<&str> = out.lines().collect();
    assert_eq!(
        answers.len(),
        lines.len(),
        "java Peer.java batch answered {} lines for {}; stderr: {}",
        answers.len(),
        lines.len(),
        ran.stderr
    );
    answers
        .into_iter()
        .map(|a| match a.strip_prefix("ok ") {
            Some(v) => Ok(v.to_owned()),
            None => Err(format!(
                "the sample returned null (it caught an exception); JVM stderr: {}",
                ran.stderr.trim()
            )),
        })
        .collect()
}

fn java_run(encoding: &str, reqs: &[Req<'_>]) -> Vec<Result<Vec<u8>, String>> {
    let lines: Vec<String> = reqs
        .iter()
        .map(|req| match req {
            Req::Encrypt { key, iv, plain } => {
                format!("encrypt {key} {iv} {}", STANDARD.encode(plain))
            }
            Req::Decrypt { key, iv, b64 } => format!("decrypt {key} {iv} {b64}"),
        })
        .collect();
    java_batch(encoding, &lines)
        .into_iter()
        .zip(reqs)
        .map(|(answer, req)| {
            let answer = answer?;
            match req {
                Req::Encrypt { .. } => Ok(answer.into_bytes()),
                Req::Decrypt { .. } => STANDARD
                    .decode(answer)
                    .map_err(|e| format!("batch answer not base64: {e}")),
            }
        })
        .collect()
}

/// Both directions for every payload; collects every incompatibility before failing.
fn check_peer(peer: Peer) {
    if !peer.available() {
        return;
    }
    let cases = cases();
    let mut problems = Vec::new();

    // What the sidecar seals: the library and the CLI must agree (deterministic CBC).
    let sealed: Vec<String> = cases
        .iter()
        .map(|c| {
            let lib = aes::encrypt(&aes_key(c.key, c.iv), &c.plain);
            match cli_seal_aes(c.key, c.iv, &c.plain) {
                Ok(cli) if cli == lib => {}
                Ok(cli) => problems.push(format!(
                    "[{}] `bsk-sidecar seal` and aes::encrypt disagree: {}",
                    c.name,
                    describe_diff(cli.as_bytes(), lib.as_bytes())
                )),
                Err(e) => problems.push(format!("[{}] {e}", c.name)),
            }
            lib
        })
        .collect();
    assert_eq!(sealed[0], SPEC_CIPHER, "the sidecar's spec vector");

    let mut reqs: Vec<Req<'_>> = cases
        .iter()
        .map(|c| Req::Encrypt {
            key: c.key,
            iv: c.iv,
            plain: &c.plain,
        })
        .collect();
    reqs.extend(cases.iter().zip(&sealed).map(|(c, b64)| Req::Decrypt {
        key: c.key,
        iv: c.iv,
        b64,
    }));
    let answers = peer.run(&reqs);
    let (encrypted, decrypted) = answers.split_at(cases.len());

    for ((c, sidecar_b64), (peer_ct, peer_plain)) in cases
        .iter()
        .zip(&sealed)
        .zip(encrypted.iter().zip(decrypted))
    {
        let name = &c.name;
        // Peer encrypts, sidecar opens.
        match peer_ct {
            Err(e) => problems.push(format!("[{name}] {peer:?} could not encrypt: {e}")),
            Ok(ct) => {
                let ct = String::from_utf8_lossy(ct);
                match aes::decrypt(&[aes_key(c.key, c.iv)], &ct, |_| true) {
                    Ok(plain) if plain == c.plain => {}
                    Ok(plain) => problems.push(format!(
                        "[{name}] aes::decrypt of {peer:?}'s ciphertext: {}",
                        describe_diff(&plain, &c.plain)
                    )),
                    Err(e) => problems.push(format!(
                        "[{name}] aes::decrypt refused {peer:?}'s ciphertext ({}): {ct:.200}",
                        e.reason()
                    )),
                }
                match cli_open_aes(c.key, c.iv, &ct) {
                    Ok(plain) if plain == c.plain => {}
                    Ok(plain) => problems.push(format!(
                        "[{name}] `bsk-sidecar open` of {peer:?}'s ciphertext: {}",
                        describe_diff(&plain, &c.plain)
                    )),
                    Err(e) => problems.push(format!("[{name}] {peer:?}'s ciphertext: {e}")),
                }
                if *ct != **sidecar_b64 {
                    problems.push(format!(
                        "[{name}] {peer:?}'s ciphertext is not the sidecar's: {}",
                        describe_diff(ct.as_bytes(), sidecar_b64.as_bytes())
                    ));
                }
                if c.plain == SPEC_PLAIN.as_bytes() && ct != SPEC_CIPHER {
                    problems.push(format!(
                        "[{name}] {peer:?} does not reproduce NOTES.md's vector: got {ct}"
                    ));
                }
            }
        }
        // Sidecar seals, peer decrypts.
        match peer_plain {
            Err(e) => problems.push(format!(
                "[{name}] {peer:?} could not decrypt the sidecar's ciphertext: {e}"
            )),
            Ok(plain) if *plain == c.plain => {}
            Ok(plain) => problems.push(format!(
                "[{name}] {peer:?} decrypted the sidecar's ciphertext to other bytes: {}",
                describe_diff(plain, &c.plain)
            )),
        }
    }

    assert!(
        problems.is_empty(),
        "{peer:?} sample vs sidecar: {} incompatibilit{}:\n  {}",
        problems.len(),
        if problems.len() == 1 { "y" } else { "ies" },
        problems.join("\n  ")
    );
}

#[test]
fn node_sample_interoperates_both_ways() {
    check_peer(Peer::Node);
}

#[test]
fn java_sample_interoperates_both_ways() {
    check_peer(Peer::Java);
}

#[test]
fn php_sample_interoperates_both_ways() {
    check_peer(Peer::Php);
}

/// Finding about the spec's Java sample, not the sidecar: `value.getBytes()` and
/// `new String(original)` use the platform default charset, which on Java 17 and older is the
/// locale's (US-ASCII when no locale is set, as on many servers and containers). Such a peer
/// turns each Bengali character into `?` before encrypting and each non-ASCII byte it
/// decrypts into U+FFFD; ASCII payloads are unaffected. A Java counterparty must run with
/// `-Dfile.encoding=UTF-8` (or on Java 18+, where UTF-8 is the default); the other tests pin
/// it so.
#[test]
fn java_sample_needs_a_utf8_default_charset_for_non_ascii() {
    if !Peer::Java.available() {
        return;
    }
    let bengali = r#"{"citizenname":"অনুপম ঘোষ"}"#;
    let sealed_bengali = aes::encrypt(&aes_key(SPEC_KEY, SPEC_IV), bengali.as_bytes());
    let lines = vec![
        "charset".to_owned(),
        format!(
            "encrypt {SPEC_KEY} {SPEC_IV} {}",
            STANDARD.encode(SPEC_PLAIN)
        ),
        format!("encrypt {SPEC_KEY} {SPEC_IV} {}", STANDARD.encode(bengali)),
        format!("decrypt {SPEC_KEY} {SPEC_IV} {sealed_bengali}"),
    ];
    let answers = java_batch("US-ASCII", &lines);
    let charset = answers[0].as_deref().expect("charset");
    if charset != "US-ASCII" {
        eprintln!("this JVM ignores -Dfile.encoding=US-ASCII (default charset {charset}); nothing to show");
        return;
    }
    // ASCII is unaffected.
    assert_eq!(answers[1].as_deref(), Ok(SPEC_CIPHER));
    // Encrypting: every Bengali character became `?`.
    let peer_ct = answers[2].as_deref().expect("the sample encrypts");
    let opened = aes::decrypt(&[aes_key(SPEC_KEY, SPEC_IV)], peer_ct, |_| true)
        .expect("the sidecar opens what the sample sent");
    let questioned: String = bengali
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&opened),
        questioned,
        "what a US-ASCII Java peer sends"
    );
    // Decrypting: every non-ASCII byte became U+FFFD.
    let peer_plain = STANDARD
        .decode(answers[3].as_deref().expect("the sample decrypts"))
        .unwrap();
    let replaced: String = bengali
        .bytes()
        .map(|b| if b.is_ascii() { b as char } else { '\u{FFFD}' })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&peer_plain),
        replaced,
        "what a US-ASCII Java peer reads"
    );
}

// ---------------------------------------------------------------- PyJWT

fn pyjwt_available() -> bool {
    require(
        "PyJWT (python3 -m pip install pyjwt)",
        false,
        probe("python3", &["-c", "import jwt"]),
    )
}

fn pyjwt(mode: &str, secret: &str, input: &[u8]) -> Ran {
    let mut cmd = Command::new("python3");
    cmd.arg(peer_dir().join("jwt_peer.py"))
        .args([mode, secret])
        .env("PYTHONIOENCODING", "utf-8");
    run(cmd, input)
}

fn pyjwt_sign(secret: &str, claims: &[u8]) -> String {
    let ran = pyjwt("sign", secret, claims);
    assert!(ran.ok(), "PyJWT could not sign: {}", ran.stderr);
    String::from_utf8(ran.stdout).expect("a compact token is ASCII")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    })
}

/// Claim sets: (name, claims JSON, whether it carries `exp`).
fn claim_sets(now: u64) -> Vec<(&'static str, String, bool)> {
    vec![
        (
            "portal request with iat/exp",
            format!(
                r#"{{"userid":9054233544,"ticketNo":20221202153322882,"serviceCode":"AMD/003","iat":{now},"exp":{}}}"#,
                now + 300
            ),
            true,
        ),
        (
            "Bengali claims with exp",
            format!(
                r#"{{"citizenname":"অনুপম ঘোষ","district":"পশ্চিম বর্ধমান","exp":{}}}"#,
                now + 300
            ),
            true,
        ),
        (
            "no exp, as real portal tokens",
            r#"{"userid":"8527419636","ticketno":"20221202153322882","passcode":376423}"#
                .to_owned(),
            false,
        ),
    ]
}

fn middle_segment(token: &str) -> Vec<u8> {
    let payload = token.split('.').nth(1).expect("three segments");
    URL_SAFE_NO_PAD.decode(payload).expect("base64url payload")
}

#[test]
fn pyjwt_tokens_are_accepted_by_the_sidecar() {
    if !pyjwt_available() {
        return;
    }
    let now = now();
    for (name, claims, has_exp) in claim_sets(now) {
        let token = pyjwt_sign(JWT_SECRET, claims.as_bytes());
        let signed = middle_segment(&token);
        assert_eq!(json(&signed), json(claims.as_bytes()), "[{name}] PyJWT");

        // Library: the payload exactly as PyJWT serialised it.
        let mut key = JwtKey::new(Secret::new(JWT_SECRET));
        key.require_exp = has_exp;
        let verified = jwt::verify(&key, &token, now)
            .unwrap_or_else(|e| panic!("[{name}] jwt::verify refused PyJWT's token: {e}"));
        assert_eq!(
            verified.payload,
            signed,
            "[{name}] jwt::verify: {}",
            describe_diff(&verified.payload, &signed)
        );
        if !has_exp {
            // The server's secure default refuses it; a peer needs `require_exp: false`.
            let strict = JwtKey::new(Secret::new(JWT_SECRET));
            assert_eq!(
                jwt::verify(&strict, &token, now).unwrap_err(),
                Failure::BadToken(TokenProblem::MissingExp),
                "[{name}]"
            );
        }

        // CLI, bare token and as an Authorization line.
        let mut args = vec![
            "open",
            "--envelope",
            "bearer,jwt",
            "--jwt-secret",
            JWT_SECRET,
        ];
        if has_exp {
            args.push("--require-exp");
        }
        for input in [token.clone(), format!("Authorization: Bearer {token}\n")] {
            let ran = sidecar(&args, input.as_bytes());
            assert!(
                ran.ok(),
                "[{name}] bsk-sidecar open refused PyJWT's token: {}",
                ran.stderr
            );
            let out = strip_one_newline(ran.stdout);
            assert_eq!(
                out,
                signed,
                "[{name}] bsk-sidecar open: {}",
                describe_diff(&out, &signed)
            );
        }
    }
}

#[test]
fn sidecar_tokens_are_accepted_by_pyjwt() {
    if !pyjwt_available() {
        return;
    }
    let verify = |name: &str, how: &str, token: &str, claims: &str| {
        let ran = pyjwt("verify", JWT_SECRET, token.as_bytes());
        assert!(
            ran.ok(),
            "[{name}] PyJWT refused the token from {how}: {}\ntoken: {token}",
            ran.stderr
        );
        assert_eq!(
            json(&ran.stdout),
            json(claims.as_bytes()),
            "[{name}] claims PyJWT read from {how}"
        );
    };
    for (name, claims, _) in claim_sets(now()) {
        // seal --envelope token,jwt: {"passcode": ..., "token": ...}
        let ran = sidecar(
            &[
                "seal",
                "--envelope",
                "token,jwt",
                "--jwt-secret",
                JWT_SECRET,
                "--passcode",
                PASSCODE,
            ],
            claims.as_bytes(),
        );
        assert!(ran.ok(), "[{name}] bsk-sidecar seal: {}", ran.stderr);
        let body = json(&ran.stdout);
        assert_eq!(body["passcode"], PASSCODE, "[{name}] sealed body {body}");
        let token = body["token"].as_str().expect("a token field");
        assert_eq!(
            middle_segment(token),
            claims.as_bytes(),
            "[{name}] signed as given"
        );
        verify(name, "seal --envelope token,jwt", token, &claims);

        // seal --envelope bearer,jwt: an Authorization line.
        let ran = sidecar(
            &[
                "seal",
                "--envelope",
                "bearer,jwt",
                "--jwt-secret",
                JWT_SECRET,
            ],
            claims.as_bytes(),
        );
        assert!(ran.ok(), "[{name}] bsk-sidecar seal: {}", ran.stderr);
        let out = String::from_utf8(ran.stdout).expect("UTF-8");
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix("Authorization: Bearer "))
            .unwrap_or_else(|| panic!("[{name}] no Authorization line in {out:?}"));
        verify(name, "seal --envelope bearer,jwt", token, &claims);

        // The library.
        let token =
            jwt::sign(&JwtKey::new(Secret::new(JWT_SECRET)), claims.as_bytes()).expect("jwt::sign");
        verify(name, "jwt::sign", &token, &claims);
    }
}

#[test]
fn a_different_secret_is_rejected_both_ways() {
    if !pyjwt_available() {
        return;
    }
    let now = now();
    let claims = format!(
        r#"{{"userid":9054233544,"ticketNo":20221202153322882,"exp":{}}}"#,
        now + 300
    );

    // PyJWT signs with another department's secret: the sidecar refuses.
    let token = pyjwt_sign(OTHER_JWT_SECRET, claims.as_bytes());
    assert_eq!(
        jwt::verify(&JwtKey::new(Secret::new(JWT_SECRET)), &token, now).unwrap_err(),
        Failure::BadToken(TokenProblem::BadSignature)
    );
    let ran = sidecar(
        &[
            "open",
            "--envelope",
            "bearer,jwt",
            "--jwt-secret",
            JWT_SECRET,
        ],
        token.as_bytes(),
    );
    assert!(
        !ran.ok() && ran.stdout.is_empty(),
        "bsk-sidecar open accepted a token signed with another secret"
    );
    assert!(ran.stderr.contains("bad_signature"), "{}", ran.stderr);
    // ...while the right secret opens the same token (the refusal is about the secret).
    assert!(jwt::verify(&JwtKey::new(Secret::new(OTHER_JWT_SECRET)), &token, now).is_ok());

    // The sidecar signs (CLI and library); PyJWT with another secret refuses.
    let ran = sidecar(
        &[
            "seal",
            "--envelope",
            "token,jwt",
            "--jwt-secret",
            JWT_SECRET,
            "--passcode",
            PASSCODE,
        ],
        claims.as_bytes(),
    );
    assert!(ran.ok(), "bsk-sidecar seal: {}", ran.stderr);
    let cli_token = json(&ran.stdout)["token"]
        .as_str()
        .expect("a token field")
        .to_owned();
    let lib_token =
        jwt::sign(&JwtKey::new(Secret::new(JWT_SECRET)), claims.as_bytes()).expect("jwt::sign");
    for token in [cli_token, lib_token] {
        let ran = pyjwt("verify", OTHER_JWT_SECRET, token.as_bytes());
        assert!(
            !ran.ok() && ran.stdout.is_empty(),
            "PyJWT accepted a token signed with another secret"
        );
        assert!(
            ran.stderr.contains("InvalidSignatureError"),
            "PyJWT's refusal: {}",
            ran.stderr
        );
        assert!(pyjwt("verify", JWT_SECRET, token.as_bytes()).ok());
    }
}
