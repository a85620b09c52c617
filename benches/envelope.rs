//! Criterion benches for `envelope::open` and `envelope::seal` on each wire shape, with the
//! spec's API-1 sample payload and a ~1 MiB API-4 response carrying a base64 document,
//! AES-256-CBC alone on 1 MiB, and the JSON bounds scan on both payloads.
//!
//! Run with `cargo bench --bench envelope`; the whole run takes well under two minutes.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bsk_sidecar::envelope::aes::AesKey;
use bsk_sidecar::envelope::jwt::JwtKey;
use bsk_sidecar::envelope::{self, BodyShape, Incoming, Layer, PeerKeys, Stack};
use bsk_sidecar::secret::Secret;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// The sidecar binary's allocator, so these figures are the product's.
#[global_allocator]
static GLOBAL: bsk_sidecar::allocator::Chosen = bsk_sidecar::allocator::CHOSEN;

const NOW: u64 = 1_700_000_000;

/// The API-1 request sample from the spec.
const API1: &str = r#"{"userid": 9054233544, "ticketNo": 20220811130723, "serviceCode": "AMD/003", "name": "Arindam Ray", "mobile": "9350778824", "email": "arindam.ray@cmail.com", "gender": "male", "age": 48}"#;

/// An API-4 response whose `documentValue` is a base64 document, about 1 MiB in all.
fn api4_one_mib() -> Vec<u8> {
    // Deterministic pseudo-random bytes (xorshift) so the base64 does not compress.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let document: Vec<u8> = (0..786_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    format!(
        r#"{{"userId": 9054233544, "tokenNo": 20220811050723, "serviceCode": "AMD/003", "serviceName": "Birth Certificate", "documentType": 2, "documentValue": "{}", "applicationStatus": 5, "statusCode": 200}}"#,
        STANDARD.encode(document)
    )
    .into_bytes()
}

const AES_KEY: &[u8; 32] = b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W";
const AES_IV: &[u8; 16] = b"V0ZMZO6WZ45KY2PL";

fn keys() -> PeerKeys {
    PeerKeys {
        agid: "BSK".to_owned(),
        passcode: Some(Secret::new("376423")),
        jwt: Some(JwtKey {
            secret: Secret::new("bsk-shared-hs256-secret-0123456789"),
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            // The samples carry no `exp`; time checks cost nothing measurable either way.
            require_exp: false,
            leeway_secs: 60,
        }),
        aes: vec![AesKey::new(AES_KEY, AES_IV).unwrap()],
    }
}

fn stacks() -> [(&'static str, Stack, BodyShape); 4] {
    use Layer::*;
    let stack = |layers: &[Layer]| Stack::new(layers).unwrap();
    [
        ("form+aes", stack(&[Form, Aes]), BodyShape::Form),
        ("token+jwt", stack(&[Token, Jwt]), BodyShape::Json),
        ("bearer+jwt", stack(&[Bearer, Jwt]), BodyShape::Json),
        ("token+jwt+aes", stack(&[Token, Jwt, Aes]), BodyShape::Json),
    ]
}

fn bench_payload(c: &mut Criterion, label: &str, plain: &[u8], samples: usize) {
    let keys = keys();
    let mut group = c.benchmark_group(format!("envelope/{label}"));
    group
        .sample_size(samples)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(plain.len() as u64));
    for (name, stack, shape) in stacks() {
        group.bench_with_input(BenchmarkId::new("seal", name), &stack, |b, stack| {
            b.iter(|| envelope::seal(stack, &keys, black_box(plain), shape).unwrap())
        });
        let sealed = envelope::seal(&stack, &keys, plain, shape).unwrap();
        let req = Incoming {
            content_type: Some(sealed.content_type),
            authorization: sealed.authorization.as_deref(),
            passcode_header: None,
            body: &sealed.body,
        };
        assert_eq!(
            envelope::open(&stack, &keys, &req, NOW).unwrap().plain,
            plain
        );
        group.bench_with_input(BenchmarkId::new("open", name), &stack, |b, stack| {
            b.iter(|| envelope::open(stack, &keys, black_box(&req), NOW).unwrap())
        });
    }
    group.finish();
}

/// AES-256-CBC on 1 MiB alone, comparable with `openssl speed -evp aes-256-cbc -decrypt`
/// (`benches/aes/run.sh` prints the ratio): the raw decryption with unpadding, and
/// `aes::decrypt` as `encData` reaches it (base64 decoding first); and beside them, as a
/// baseline, the raw decryption by RustCrypto's `cbc`, which opened documents before.
fn aes_one_mib(c: &mut Criterion) {
    use bsk_sidecar::envelope::aes;
    let key = &keys().aes[0];
    let plain = vec![b'x'; 1 << 20];
    let ct = aes::encrypt_raw(key, &plain);
    let b64 = aes::encrypt(key, &plain);
    let mut group = c.benchmark_group("aes/1MiB");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(ct.len() as u64));
    group.bench_function("decrypt_raw", |b| {
        b.iter(|| aes::decrypt_raw(key, black_box(&ct)).unwrap())
    });
    group.bench_function("decrypt_base64", |b| {
        b.iter(|| aes::decrypt(std::slice::from_ref(key), black_box(&b64), |_| true).unwrap())
    });
    group.bench_function("decrypt_raw_cbc_crate", |b| {
        use cbc::cipher::block_padding::Pkcs7;
        use cbc::cipher::{BlockDecryptMut, KeyIvInit};
        b.iter(|| {
            let mut buf = black_box(&ct).clone();
            let n = cbc::Decryptor::<::aes::Aes256>::new(AES_KEY.into(), AES_IV.into())
                .decrypt_padded_mut::<Pkcs7>(&mut buf)
                .unwrap()
                .len();
            buf.truncate(n);
            buf
        })
    });
    group.finish();
}

/// The checks every opened body passes, on the API-1 sample and on the 1 MiB API-4 answer
/// (the string bound raised to let the document through): the structural bounds scan
/// (`guard::bounds`, group `bounds`), and the payload check (`guard::payload::validate`:
/// the bounds, then one parse for UTF-8, one value, no repeated key, numbers in range;
/// group `payload`).
fn json_checks(c: &mut Criterion) {
    use bsk_sidecar::guard::bounds::JsonBounds;
    use bsk_sidecar::guard::payload::validate;
    let api4 = api4_one_mib();
    let b = JsonBounds {
        max_string: 2 << 20,
        ..JsonBounds::default()
    };
    let docs = [("api1_sample", API1.as_bytes()), ("api4_1MiB", &api4)];
    on_docs(c, "bounds", "check", &docs, |doc| b.check(doc).unwrap());
    on_docs(c, "payload", "validate", &docs, |doc| {
        validate(doc, &b).unwrap()
    });
}

/// One criterion group: `check` timed on each document.
fn on_docs(
    c: &mut Criterion,
    group: &str,
    function: &str,
    docs: &[(&str, &[u8])],
    check: impl Fn(&[u8]),
) {
    let mut group = c.benchmark_group(group);
    group
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, doc) in docs {
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_with_input(BenchmarkId::new(function, name), doc, |bench, doc| {
            bench.iter(|| check(black_box(doc)))
        });
    }
    group.finish();
}

fn envelope_benches(c: &mut Criterion) {
    bench_payload(c, "api1_sample", API1.as_bytes(), 50);
    bench_payload(c, "api4_1MiB", &api4_one_mib(), 20);
    aes_one_mib(c);
    json_checks(c);
}

criterion_group!(benches, envelope_benches);
criterion_main!(benches);
