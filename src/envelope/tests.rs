//! Unit tests for the envelope layers: known answers (spec, Wycheproof, RFC 7515/7519),
//! round trips for every wire shape, and each way a request must be refused.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::aes::{self, AesFailure, AesKey};
use super::jwt::{self, JwtKey};
use super::*;
use crate::secret::Secret;

const SPEC_KEY: &[u8] = b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W";
const SPEC_IV: &[u8] = b"V0ZMZO6WZ45KY2PL";
const SPEC_PLAIN: &str = r#"{"userid":"8527419636","ticketno":"20221202153322882","citizenmobile":"9963258963","citizenname":"Anupam Ghosh"}"#;
const SPEC_CT: &str = "m4p3CxxkyshZk6hQdSi509Uu3Gn8i4MXIz/uqgSl40FfH0Hv7M/ThZj3YnAiVLdmuQ4DdGEPVLYtOihNsC2c59tkK97qagxo9+rX6hWJem/AilzVNBTsN206liJKiAaoFAKfmaxFAFo/UmGTrVExKI428RouVxqyechhX0OyIDg=";

/// A 17-digit number (> 2^53) and odd spacing: any re-serialisation would change these bytes.
const TICKET_PLAIN: &str = "{\"userid\": 9054233544, \"ticketNo\": 20221202153322882,\n \"serviceCode\": \"AMD/003\", \"amount\": 1.50}";

const NOW: u64 = 1_700_000_000;

const AES_VECTORS: &str = include_str!("../../tests/fixtures/wycheproof/aes_cbc_pkcs5_test.json");
const JWS_VECTORS: &str =
    include_str!("../../tests/fixtures/wycheproof/json_web_signature_test.json");
const RFC_VECTORS: &str = include_str!("../../tests/fixtures/rfc7515_7519_hs256_examples.json");

fn spec_key() -> AesKey {
    AesKey::new(SPEC_KEY, SPEC_IV).unwrap()
}

fn other_key() -> AesKey {
    AesKey::new(b"0123456789ABCDEFGHIJKLMNOPQRSTUV", b"FEDCBA9876543210").unwrap()
}

fn jwt_key() -> JwtKey {
    JwtKey {
        secret: Secret::new("bsk-shared-hs256-secret-0123456789"),
        algorithms: vec![Algorithm::HS256],
        require_exp: false,
        leeway_secs: 60,
    }
}

fn peer() -> PeerKeys {
    PeerKeys {
        agid: "BSK".to_owned(),
        passcode: Some(Secret::new("376423")),
        jwt: Some(jwt_key()),
        aes: vec![spec_key()],
    }
}

fn body(body: &[u8]) -> Incoming<'_> {
    Incoming {
        content_type: None,
        authorization: None,
        passcode_header: None,
        body,
    }
}

fn form_body(agid: &str, enc_data_raw: &str) -> Vec<u8> {
    format!("agId={agid}&encData={enc_data_raw}").into_bytes()
}

fn form_request(body: &[u8]) -> Incoming<'_> {
    Incoming {
        content_type: Some("application/x-www-form-urlencoded"),
        ..self::body(body)
    }
}

fn percent_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// [`super::open`] for a stack written as a slice, which must be a valid [`Stack`].
fn open(
    layers: &[Layer],
    keys: &PeerKeys,
    req: &Incoming<'_>,
    now: u64,
) -> Result<Opened, Failure> {
    let stack = Stack::new(layers).unwrap_or_else(|p| panic!("{layers:?}: {p:?}"));
    super::open(&stack, keys, req, now)
}

fn open_sealed(layers: &[Layer], keys: &PeerKeys, sealed: &Sealed) -> Result<Opened, Failure> {
    let req = Incoming {
        content_type: Some(sealed.content_type),
        authorization: sealed.authorization.as_deref(),
        passcode_header: None,
        body: &sealed.body,
    };
    open(layers, keys, &req, NOW)
}

fn sign_claims(key: &JwtKey, claims: &str) -> String {
    jwt::sign(key, claims.as_bytes()).unwrap()
}

// ---------------------------------------------------------------- AES known answers

#[test]
fn spec_vector_encrypts_to_the_true_ciphertext() {
    assert_eq!(aes::encrypt(&spec_key(), SPEC_PLAIN.as_bytes()), SPEC_CT);
}

#[test]
fn spec_vector_decrypts_to_the_plaintext() {
    let plain = aes::decrypt(&[spec_key()], SPEC_CT, |_| true).unwrap();
    assert_eq!(plain, SPEC_PLAIN.as_bytes());
}

#[test]
fn spec_vector_opens_through_form_and_aes() {
    let body = form_body("BSK", &percent_encode(SPEC_CT));
    let opened = open(
        &[Layer::Form, Layer::Aes],
        &peer(),
        &form_request(&body),
        NOW,
    )
    .unwrap();
    assert_eq!(opened.plain, SPEC_PLAIN.as_bytes());
    assert_eq!(opened.shape, BodyShape::Form);
}

#[test]
fn aes_key_and_iv_lengths_are_checked() {
    assert!(AesKey::new(&SPEC_KEY[..31], SPEC_IV).is_err());
    assert!(AesKey::new(SPEC_KEY, &SPEC_IV[..15]).is_err());
    assert!(AesKey::new(b"", b"").is_err());
    let err = AesKey::new(b"short-secret-key", SPEC_IV).unwrap_err();
    assert!(
        !err.contains("short-secret-key"),
        "error must not echo the key: {err}"
    );
}

/// One Wycheproof AES-CBC-PKCS#5 case.
struct AesCase {
    tc_id: u64,
    key: AesKey,
    msg: Vec<u8>,
    ct: Vec<u8>,
    valid: bool,
}

/// The Wycheproof cases with 256-bit keys.
fn wycheproof_aes256() -> Vec<AesCase> {
    let file: Value = serde_json::from_str(AES_VECTORS).unwrap();
    let mut cases = Vec::new();
    let mut all = 0;
    for group in file["testGroups"].as_array().unwrap() {
        let tests = group["tests"].as_array().unwrap();
        all += tests.len();
        if group["keySize"].as_u64() != Some(256) {
            continue;
        }
        assert_eq!(group["ivSize"].as_u64(), Some(128));
        for case in tests {
            let key = AesKey::new(
                &hex(case["key"].as_str().unwrap()),
                &hex(case["iv"].as_str().unwrap()),
            )
            .unwrap();
            let valid = match case["result"].as_str().unwrap() {
                "valid" => true,
                "invalid" => false,
                other => panic!("unexpected result {other}"),
            };
            cases.push(AesCase {
                tc_id: case["tcId"].as_u64().unwrap(),
                key,
                msg: hex(case["msg"].as_str().unwrap()),
                ct: hex(case["ct"].as_str().unwrap()),
                valid,
            });
        }
    }
    assert_eq!(all as u64, file["numberOfTests"].as_u64().unwrap());
    cases
}

#[test]
fn wycheproof_aes256_cbc_valid_cases_decrypt_and_encrypt_exactly() {
    let cases = wycheproof_aes256();
    assert_eq!(cases.len(), 72, "the file has 72 cases with 256-bit keys");
    assert_eq!(
        cases.iter().filter(|c| c.valid).count(),
        24,
        "24 of them valid"
    );
    let mut valid = 0;
    for AesCase {
        tc_id,
        key,
        msg,
        ct,
        ..
    } in cases.iter().filter(|c| c.valid)
    {
        assert_eq!(&aes::encrypt_raw(key, msg), ct, "tcId {tc_id} encrypt");
        assert_eq!(
            &aes::decrypt_raw(key, ct).unwrap(),
            msg,
            "tcId {tc_id} decrypt"
        );
        // Through the base64 entry point too (most messages are not UTF-8: accept-all is
        // not enough there, so only check the ones that are).
        let via_b64 = aes::decrypt(std::slice::from_ref(key), &STANDARD.encode(ct), |_| true);
        match std::str::from_utf8(msg) {
            Ok(_) => assert_eq!(&via_b64.unwrap(), msg, "tcId {tc_id}"),
            Err(_) => assert_eq!(via_b64, Err(AesFailure::NotUtf8), "tcId {tc_id}"),
        }
        valid += 1;
    }
    assert_eq!(valid, 24);
}

#[test]
fn wycheproof_aes256_cbc_invalid_cases_are_all_refused_the_same_way() {
    let cases = wycheproof_aes256();
    let mut invalid = 0;
    for AesCase { tc_id, key, ct, .. } in cases.iter().filter(|c| !c.valid) {
        assert!(
            aes::decrypt_raw(key, ct).is_err(),
            "tcId {tc_id} decrypt_raw"
        );
        let b64 = STANDARD.encode(ct);
        assert!(
            aes::decrypt(std::slice::from_ref(key), &b64, |_| true).is_err(),
            "tcId {tc_id} decrypt"
        );
        let keys = PeerKeys {
            aes: vec![key.clone()],
            ..peer()
        };
        let body = form_body("BSK", &percent_encode(&b64));
        let err = open(&[Layer::Form, Layer::Aes], &keys, &form_request(&body), NOW).unwrap_err();
        assert!(
            matches!(err, Failure::Undecryptable(_)),
            "tcId {tc_id}: {err:?} is not the one public failure"
        );
        invalid += 1;
    }
    assert_eq!(invalid, 48);
}

// ---------------------------------------------------------------- AES tolerance and rotation

#[test]
fn aes_tolerates_plus_as_space_missing_padding_and_line_breaks() {
    let keys = [spec_key()];
    let accept = |_: &[u8]| true;
    let spaced = SPEC_CT.replace('+', " ");
    assert_ne!(
        spaced, SPEC_CT,
        "the vector must contain a '+' for this test to mean anything"
    );
    assert_eq!(
        aes::decrypt(&keys, &spaced, accept).unwrap(),
        SPEC_PLAIN.as_bytes()
    );
    let unpadded = SPEC_CT.trim_end_matches('=');
    assert_ne!(unpadded, SPEC_CT);
    assert_eq!(
        aes::decrypt(&keys, unpadded, accept).unwrap(),
        SPEC_PLAIN.as_bytes()
    );
    let mime: String = SPEC_CT
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\r\n", std::str::from_utf8(line).unwrap()))
        .collect();
    assert_eq!(
        aes::decrypt(&keys, &mime, accept).unwrap(),
        SPEC_PLAIN.as_bytes()
    );
    let tabbed = format!("\t{}\n", &SPEC_CT);
    assert_eq!(
        aes::decrypt(&keys, &tabbed, accept).unwrap(),
        SPEC_PLAIN.as_bytes()
    );
}

#[test]
fn unencoded_plus_in_a_form_body_still_opens() {
    // A careless sender puts the raw base64 in the form: `+` arrives as a space.
    let body = form_body("BSK", SPEC_CT);
    let opened = open(
        &[Layer::Form, Layer::Aes],
        &peer(),
        &form_request(&body),
        NOW,
    )
    .unwrap();
    assert_eq!(opened.plain, SPEC_PLAIN.as_bytes());
}

#[test]
fn aes_detailed_failures() {
    let keys = [spec_key()];
    let accept = |_: &[u8]| true;
    assert_eq!(
        aes::decrypt(&keys, "not*base64!", accept),
        Err(AesFailure::BadBase64)
    );
    assert_eq!(aes::decrypt(&keys, "", accept), Err(AesFailure::BadLength));
    assert_eq!(
        aes::decrypt(&keys, "AAAA", accept),
        Err(AesFailure::BadLength)
    );
    assert_eq!(
        aes::decrypt(&keys, &STANDARD.encode([0u8; 16]), accept),
        Err(AesFailure::BadPadding)
    );
    let not_utf8 = aes::encrypt(&spec_key(), &[0xff, 0xfe, 0x00]);
    assert_eq!(
        aes::decrypt(&keys, &not_utf8, accept),
        Err(AesFailure::NotUtf8)
    );
    assert_eq!(
        aes::decrypt(&keys, SPEC_CT, |_| false),
        Err(AesFailure::NotAccepted)
    );
    assert_eq!(
        aes::decrypt(&[], SPEC_CT, accept),
        Err(AesFailure::BadPadding)
    );
}

#[test]
fn key_rotation_opens_what_the_old_key_sealed() {
    let stack = [Layer::Form, Layer::Aes];
    let old = peer();
    let sealed = seal(&stack, &old, TICKET_PLAIN.as_bytes(), BodyShape::Form).unwrap();
    let rotated = PeerKeys {
        aes: vec![other_key(), spec_key()],
        ..peer()
    };
    let opened = open_sealed(&stack, &rotated, &sealed).unwrap();
    assert_eq!(opened.plain, TICKET_PLAIN.as_bytes());
    // And seal uses the first (current) key, which the old-only peer cannot open.
    let resealed = seal(&stack, &rotated, TICKET_PLAIN.as_bytes(), BodyShape::Form).unwrap();
    // The current key opens too (the last key decrypts in place, the others a copy).
    let opened = open_sealed(&stack, &rotated, &resealed).unwrap();
    assert_eq!(opened.plain, TICKET_PLAIN.as_bytes());
    // The failure reported is the furthest any key got, whichever place that key has.
    let not_utf8 = aes::encrypt(&spec_key(), &[0xff, 0xfe, 0x00]);
    for keys in [[spec_key(), other_key()], [other_key(), spec_key()]] {
        assert_eq!(
            aes::decrypt(&keys, &not_utf8, |_| true),
            Err(AesFailure::NotUtf8)
        );
    }
    assert!(matches!(
        open_sealed(&stack, &old, &resealed),
        Err(Failure::Undecryptable(_))
    ));
}

#[test]
fn wrong_key_is_undecryptable() {
    let body = form_body("BSK", &percent_encode(SPEC_CT));
    let keys = PeerKeys {
        aes: vec![other_key()],
        ..peer()
    };
    let err = open(&[Layer::Form, Layer::Aes], &keys, &form_request(&body), NOW).unwrap_err();
    assert!(matches!(err, Failure::Undecryptable(_)), "{err:?}");
}

#[test]
fn non_json_plaintext_is_undecryptable_not_json() {
    let ct = aes::encrypt(&spec_key(), b"userid=8527419636");
    let body = form_body("BSK", &percent_encode(&ct));
    let err = open(
        &[Layer::Form, Layer::Aes],
        &peer(),
        &form_request(&body),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err, Failure::Undecryptable(Undecryptable::NotJson));
    assert_eq!(err.reason(), "not_json");
}

// ---------------------------------------------------------------- form layer

#[test]
fn form_wrong_agid_is_refused_exactly_and_case_sensitively() {
    let ct = percent_encode(SPEC_CT);
    for agid in ["WBSK", "bsk", "BSK ", ""] {
        let body = form_body(&percent_encode(agid), &ct);
        let err = open(
            &[Layer::Form, Layer::Aes],
            &peer(),
            &form_request(&body),
            NOW,
        )
        .unwrap_err();
        assert_eq!(err, Failure::WrongAgid, "agId {agid:?}");
    }
}

#[test]
fn form_missing_or_duplicate_fields_are_malformed() {
    let ct = percent_encode(SPEC_CT);
    let bodies = [
        format!("encData={ct}"),
        "agId=BSK".to_owned(),
        format!("agId=BSK&encData={ct}&encData={ct}"),
        format!("agId=BSK&agId=BSK&encData={ct}"),
        String::new(),
    ];
    for b in &bodies {
        let err = open(
            &[Layer::Form, Layer::Aes],
            &peer(),
            &form_request(b.as_bytes()),
            NOW,
        )
        .unwrap_err();
        assert_eq!(
            err,
            Failure::Undecryptable(Undecryptable::MalformedForm),
            "{b}"
        );
    }
    let json = format!(r#"{{"agId":"BSK","encData":"{SPEC_CT}","encData":"{SPEC_CT}"}}"#);
    let err = open(
        &[Layer::Form, Layer::Aes],
        &peer(),
        &body(json.as_bytes()),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err, Failure::Undecryptable(Undecryptable::MalformedForm));
    let err = open(
        &[Layer::Form, Layer::Aes],
        &peer(),
        &body(br#"{"agId":"BSK","encData":7}"#),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err, Failure::Undecryptable(Undecryptable::MalformedForm));
}

#[test]
fn form_extra_fields_are_ignored() {
    let body = format!("submit=Go&agId=BSK&encData={}", percent_encode(SPEC_CT));
    let opened = open(
        &[Layer::Form, Layer::Aes],
        &peer(),
        &form_request(body.as_bytes()),
        NOW,
    )
    .unwrap();
    assert_eq!(opened.plain, SPEC_PLAIN.as_bytes());
}

#[test]
fn form_seal_encodes_exactly_like_form_urlencoded() {
    let tricky = "a+b/c=d e&f%g\u{e9}\u{1F600}*-._~!'()";
    let (body, content_type) = form::seal("W B/S+K", tricky, BodyShape::Form);
    let expected = form_urlencoded::Serializer::new(String::new())
        .append_pair("agId", "W B/S+K")
        .append_pair("encData", tricky)
        .finish();
    assert_eq!(String::from_utf8(body).unwrap(), expected);
    assert_eq!(content_type, "application/x-www-form-urlencoded");
}

#[test]
fn form_shape_follows_content_type_then_body() {
    use super::form::shape_of;
    assert_eq!(
        shape_of(Some("application/json"), b"agId=x"),
        BodyShape::Json
    );
    assert_eq!(
        shape_of(Some("Application/JSON; charset=utf-8"), b""),
        BodyShape::Json
    );
    assert_eq!(
        shape_of(Some("application/vnd.bsk+json"), b""),
        BodyShape::Json
    );
    assert_eq!(
        shape_of(Some("application/x-www-form-urlencoded"), b"{"),
        BodyShape::Form
    );
    assert_eq!(shape_of(Some("text/plain"), b"{}"), BodyShape::Form);
    assert_eq!(shape_of(None, b"  \r\n{\"agId\":1}"), BodyShape::Json);
    assert_eq!(shape_of(None, b"agId=BSK"), BodyShape::Form);
    assert_eq!(shape_of(Some("+json"), b""), BodyShape::Form);
}

#[test]
fn form_json_object_opens_without_content_type() {
    let json = format!(r#" {{"agId": "BSK", "encData": "{SPEC_CT}"}}"#);
    let opened = open(
        &[Layer::Form, Layer::Aes],
        &peer(),
        &body(json.as_bytes()),
        NOW,
    )
    .unwrap();
    assert_eq!(opened.plain, SPEC_PLAIN.as_bytes());
    assert_eq!(opened.shape, BodyShape::Json);
}

// ---------------------------------------------------------------- token and bearer layers

fn token_body(passcode_json: &str, token: &str) -> Vec<u8> {
    format!(r#"{{"passcode": {passcode_json}, "token": "{token}"}}"#).into_bytes()
}

#[test]
fn the_ids_are_the_innermost_payloads_not_the_claims_around_it() {
    let keys = peer();
    let enc = aes::encrypt(&spec_key(), SPEC_PLAIN.as_bytes());
    let claims = format!(r#"{{"userid":"1111111111","ticketNo":"1","encData":"{enc}"}}"#);
    let b = token_body(r#""376423""#, &sign_claims(&jwt_key(), &claims));
    let opened = open(
        &[Layer::Token, Layer::Jwt, Layer::Aes],
        &keys,
        &body(&b),
        NOW,
    )
    .unwrap();
    assert_eq!(opened.plain, SPEC_PLAIN.as_bytes());
    assert_eq!(opened.ids.userid.as_deref(), Some("8527419636"));
    assert_eq!(opened.ids.ticket_no.as_deref(), Some("20221202153322882"));
    // Without `aes` inside, the claims are the payload and name the ids.
    let b = token_body(
        r#""376423""#,
        &sign_claims(&jwt_key(), r#"{"userId":"1111111111"}"#),
    );
    let opened = open(&[Layer::Token, Layer::Jwt], &keys, &body(&b), NOW).unwrap();
    assert_eq!(opened.ids.userid.as_deref(), Some("1111111111"));
}

/// The signature a token without `jti` is held once by, for each HMAC algorithm: its
/// whole third segment (43, 64 and 86 characters), in place.
#[test]
fn every_hmac_signature_is_kept_whole() {
    for (alg, len) in [
        (Algorithm::HS256, 43),
        (Algorithm::HS384, 64),
        (Algorithm::HS512, 86),
    ] {
        let key = JwtKey {
            algorithms: vec![alg],
            ..jwt_key()
        };
        let token = sign_claims(&key, TICKET_PLAIN);
        let keys = PeerKeys {
            jwt: Some(key),
            ..peer()
        };
        let b = token_body(r#""376423""#, &token);
        let opened = open(&[Layer::Token, Layer::Jwt], &keys, &body(&b), NOW).unwrap();
        let (_, _, signature) = crate::envelope::jwt::segments(&token).unwrap();
        assert_eq!(signature.len(), len, "{alg:?}");
        assert_eq!(opened.jwt_signature.as_deref(), Some(signature), "{alg:?}");
    }
}

#[test]
fn token_passcode_as_string_or_exact_number() {
    let token = sign_claims(&jwt_key(), TICKET_PLAIN);
    for passcode in [r#""376423""#, "376423"] {
        let b = token_body(passcode, &token);
        let opened = open(&[Layer::Token, Layer::Jwt], &peer(), &body(&b), NOW).unwrap();
        assert_eq!(opened.plain, TICKET_PLAIN.as_bytes(), "passcode {passcode}");
        // The token's signature (its replay key without a `jti`): the third segment.
        let (_, _, signature) = crate::envelope::jwt::segments(&token).unwrap();
        assert_eq!(opened.jwt_signature.as_deref(), Some(signature));
    }
    for passcode in [
        r#""376424""#,
        "376423.0",
        "3764230",
        r#""""#,
        r#"" 376423""#,
    ] {
        let b = token_body(passcode, &token);
        let err = open(&[Layer::Token, Layer::Jwt], &peer(), &body(&b), NOW).unwrap_err();
        assert_eq!(err, Failure::BadPasscode, "passcode {passcode}");
    }
}

#[test]
fn token_body_problems_are_malformed_token() {
    let token = sign_claims(&jwt_key(), TICKET_PLAIN);
    let bodies = [
        format!(r#"{{"token": "{token}"}}"#),
        r#"{"passcode": "376423"}"#.to_owned(),
        format!(r#"{{"passcode": null, "token": "{token}"}}"#),
        format!(r#"{{"passcode": true, "token": "{token}"}}"#),
        r#"{"passcode": "376423", "token": 5}"#.to_owned(),
        format!(r#"{{"passcode": "1", "passcode": "376423", "token": "{token}"}}"#),
        // A second `passcode` spelt with an escape is the same key.
        format!(r#"{{"passcode": "1", "pass\u0063ode": "376423", "token": "{token}"}}"#),
        format!(r#"[{{"passcode": "376423", "token": "{token}"}}]"#),
        "passcode=376423".to_owned(),
        String::new(),
    ];
    for b in &bodies {
        let err = open(
            &[Layer::Token, Layer::Jwt],
            &peer(),
            &body(b.as_bytes()),
            NOW,
        )
        .unwrap_err();
        assert_eq!(err, Failure::MalformedToken, "{b}");
    }
}

#[test]
fn token_layer_without_passcode_is_misconfigured() {
    let keys = PeerKeys {
        passcode: None,
        ..peer()
    };
    let b = token_body("376423", &sign_claims(&jwt_key(), TICKET_PLAIN));
    let err = open(&[Layer::Token, Layer::Jwt], &keys, &body(&b), NOW).unwrap_err();
    assert_eq!(err, Failure::Misconfigured("passcode"));
}

#[test]
fn bearer_scheme_is_case_insensitive_and_required() {
    let token = sign_claims(&jwt_key(), TICKET_PLAIN);
    let keys = PeerKeys {
        passcode: None,
        ..peer()
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {token}");
        let req = Incoming {
            authorization: Some(&auth),
            ..body(b"ignored, not JSON")
        };
        let opened = open(&[Layer::Bearer, Layer::Jwt], &keys, &req, NOW).unwrap();
        assert_eq!(opened.plain, TICKET_PLAIN.as_bytes());
    }
    let basic = format!("Basic {token}");
    for auth in [
        None,
        Some(basic.as_str()),
        Some("Bearer"),
        Some("Bearer   "),
        Some(token.as_str()),
    ] {
        let req = Incoming {
            authorization: auth,
            ..body(b"")
        };
        let err = open(&[Layer::Bearer, Layer::Jwt], &keys, &req, NOW).unwrap_err();
        assert_eq!(err, Failure::MalformedToken, "{auth:?}");
    }
}

#[test]
fn bearer_passcode_from_header_or_body() {
    let token = sign_claims(&jwt_key(), TICKET_PLAIN);
    let auth = format!("Bearer {token}");
    let stack = [Layer::Bearer, Layer::Jwt];
    let req = |passcode_header, body| Incoming {
        content_type: Some("application/json"),
        authorization: Some(&auth),
        passcode_header,
        body,
    };
    let ok: [(Option<&str>, &[u8]); 4] = [
        (Some("376423"), b""),
        (None, br#"{"passcode":"376423","other":1}"#),
        (None, br#"{"passcode":376423}"#),
        (Some("376423"), br#"{"passcode":"376423"}"#),
    ];
    for (header, b) in ok {
        assert!(
            open(&stack, &peer(), &req(header, b), NOW).is_ok(),
            "{header:?} {b:?}"
        );
    }
    let bad: [(Option<&str>, &[u8]); 6] = [
        (None, b""),
        (None, br#"{"other":1}"#),
        (Some("000000"), b""),
        (None, br#"{"passcode":"000000"}"#),
        (Some("376423"), br#"{"passcode":"000000"}"#),
        (None, br#"{"passcode":"376423","passcode":"376423"}"#),
    ];
    for (header, b) in bad {
        let err = open(&stack, &peer(), &req(header, b), NOW).unwrap_err();
        assert_eq!(err, Failure::BadPasscode, "{header:?} {b:?}");
    }
}

// ---------------------------------------------------------------- JWT known answers

fn rfc_vectors() -> Value {
    serde_json::from_str(RFC_VECTORS).unwrap()
}

fn rfc7515_key(require_exp: bool) -> JwtKey {
    let k = rfc_vectors()["rfc7515_A1_hs256"]["jwk"]["k"]
        .as_str()
        .unwrap()
        .to_owned();
    JwtKey {
        secret: Secret::new(URL_SAFE_NO_PAD.decode(k).unwrap()),
        algorithms: vec![Algorithm::HS256],
        require_exp,
        leeway_secs: 0,
    }
}

#[test]
fn rfc7515_a1_verifies_with_the_clock_pinned_before_exp() {
    let v = rfc_vectors();
    let token = v["rfc7515_A1_hs256"]["token"].as_str().unwrap();
    let payload = v["rfc7515_A1_hs256"]["payload_bytes"].as_str().unwrap();
    let exp = 1_300_819_380;
    let verified = jwt::verify(&rfc7515_key(true), token, exp - 80).unwrap();
    // The CRLFs and spacing of the signed payload survive untouched.
    assert_eq!(verified.payload, payload.as_bytes());
    assert_eq!(verified.iat, None);
    assert_eq!(verified.jti, None);
    assert!(
        jwt::verify(&rfc7515_key(true), token, exp).is_ok(),
        "exp itself is still valid"
    );
    assert_eq!(
        jwt::verify(&rfc7515_key(true), token, exp + 1).unwrap_err(),
        Failure::BadToken(TokenProblem::Expired)
    );
}

#[test]
fn rfc7515_a1_is_expired_on_the_real_clock() {
    let token = rfc_vectors()["rfc7515_A1_hs256"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        jwt::verify(&rfc7515_key(false), &token, now).unwrap_err(),
        Failure::BadToken(TokenProblem::Expired)
    );
}

#[test]
fn rfc7519_unsecured_token_is_refused() {
    let token = rfc_vectors()["rfc7519_6_1_unsecured"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = rfc7515_key(false);
    // Every way we might see it: alone, through the layers, with any allowed HMAC alg.
    assert_eq!(
        jwt::verify(&key, &token, 1_300_819_000).unwrap_err(),
        Failure::BadToken(TokenProblem::AlgNotAllowed)
    );
    let all_hmac = JwtKey {
        algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        ..key
    };
    assert!(jwt::verify(&all_hmac, &token, 1_300_819_000).is_err());
    let auth = format!("Bearer {token}");
    let req = Incoming {
        authorization: Some(&auth),
        ..body(b"")
    };
    let keys = PeerKeys {
        passcode: None,
        jwt: Some(all_hmac),
        ..peer()
    };
    assert_eq!(
        open(&[Layer::Bearer, Layer::Jwt], &keys, &req, 1_300_819_000).unwrap_err(),
        Failure::BadToken(TokenProblem::AlgNotAllowed)
    );
}

#[test]
fn wycheproof_hs256_cases_are_accepted_and_rejected_as_expected() {
    // 372/373 are marked valid because some libraries skip a stray '?' in base64url; a
    // strict verifier refuses them, and so do we (documented deviation).
    const STRICT_DEVIATIONS: [u64; 2] = [372, 373];
    // 367/370 ("invalidBase64Padding…") are byte-identical to the valid tcId 357 in this
    // copy of the file (their `=` padding is gone), so no verifier can satisfy both: skipped,
    // after checking that this really is the reason.
    const DEFECTIVE: [u64; 2] = [367, 370];
    let file: Value = serde_json::from_str(JWS_VECTORS).unwrap();
    let (mut accepted, mut rejected, mut deviations) = (0, 0, 0);
    let mut jws_by_id = std::collections::HashMap::new();
    let mut aes_sign_ids = Vec::new();
    for group in file["testGroups"].as_array().unwrap() {
        let private = &group["private"];
        if private["kty"] != "oct" || private["alg"] != "HS256" {
            continue;
        }
        let key = JwtKey {
            secret: Secret::new(
                URL_SAFE_NO_PAD
                    .decode(private["k"].as_str().unwrap())
                    .unwrap(),
            ),
            algorithms: vec![Algorithm::HS256],
            require_exp: false,
            leeway_secs: 0,
        };
        for case in group["tests"].as_array().unwrap() {
            let tc_id = case["tcId"].as_u64().unwrap();
            if private["kid"] == "kid-aes-sign" {
                aes_sign_ids.push(tc_id);
            }
            let jws = case["jws"].as_str().unwrap();
            jws_by_id.insert(tc_id, jws.to_owned());
            if DEFECTIVE.contains(&tc_id) {
                continue;
            }
            let by_signature = jwt::verify_signature(&key, jws);
            let full = jwt::verify(&key, jws, NOW);
            if case["result"] == "valid" && !STRICT_DEVIATIONS.contains(&tc_id) {
                let payload = by_signature.unwrap_or_else(|e| panic!("tcId {tc_id}: {e:?}"));
                let expected = URL_SAFE_NO_PAD
                    .decode(jws.split('.').nth(1).unwrap())
                    .unwrap();
                assert_eq!(payload, expected, "tcId {tc_id}");
                // These payloads are plain text ("foo", "Test"): a signed token whose payload
                // is not JSON passes the signature and is then refused as claims.
                match full {
                    Ok(ref v) => assert_eq!(v.payload, expected, "tcId {tc_id}"),
                    Err(e) => assert_eq!(
                        e,
                        Failure::BadToken(TokenProblem::MalformedClaims),
                        "tcId {tc_id}"
                    ),
                }
                accepted += 1;
            } else {
                assert!(by_signature.is_err(), "tcId {tc_id} accepted by signature");
                assert!(full.is_err(), "tcId {tc_id} accepted");
                if STRICT_DEVIATIONS.contains(&tc_id) {
                    deviations += 1;
                } else {
                    rejected += 1;
                }
            }
            if tc_id == 16 {
                assert_eq!(
                    full.unwrap_err(),
                    Failure::BadToken(TokenProblem::AlgNotAllowed),
                    "alg none"
                );
            }
        }
    }
    assert_eq!(aes_sign_ids, (1..=17).collect::<Vec<_>>());
    for id in DEFECTIVE {
        assert_eq!(
            jws_by_id[&id], jws_by_id[&357],
            "tcId {id} is no longer a copy of 357"
        );
    }
    assert_eq!((accepted, rejected, deviations), (8, 28, 2));
}

// ---------------------------------------------------------------- JWT checks

#[test]
fn jwt_sign_uses_the_documented_header_and_raw_payload() {
    let token = jwt::sign(&jwt_key(), TICKET_PLAIN.as_bytes()).unwrap();
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    assert_eq!(header, br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    assert_eq!(payload, TICKET_PLAIN.as_bytes());
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap().len(),
        32
    );
    assert!(parts.next().is_none());
    // And jsonwebtoken agrees it is a good HS256 token.
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(jwt_key().secret.expose()),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims["serviceCode"], "AMD/003");
}

#[test]
fn jwt_sign_refuses_non_json_and_unsupported_algorithms() {
    assert_eq!(
        jwt::sign(&jwt_key(), b"not json"),
        Err(Failure::BadToken(TokenProblem::MalformedClaims))
    );
    let rsa = JwtKey {
        algorithms: vec![Algorithm::RS256],
        ..jwt_key()
    };
    assert_eq!(
        jwt::sign(&rsa, b"{}"),
        Err(Failure::Misconfigured("jwt algorithm"))
    );
    let empty = JwtKey {
        secret: Secret::new(""),
        ..jwt_key()
    };
    assert_eq!(
        jwt::sign(&empty, b"{}"),
        Err(Failure::Misconfigured("jwt secret"))
    );
    let token = jwt::sign(&jwt_key(), b"{}").unwrap();
    assert_eq!(
        jwt::verify(&empty, &token, NOW).unwrap_err(),
        Failure::Misconfigured("jwt secret")
    );
}

#[test]
fn jwt_tampered_signature_payload_or_secret_is_bad_signature() {
    let token = sign_claims(&jwt_key(), r#"{"amount":1}"#);
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut sig = signature.to_owned().into_bytes();
    sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
    let tampered_sig = format!("{message}.{}", String::from_utf8(sig).unwrap());
    let (header, _) = message.split_once('.').unwrap();
    let tampered_payload = format!(
        "{header}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(r#"{"amount":9}"#)
    );
    for t in [tampered_sig, tampered_payload] {
        assert_eq!(
            jwt::verify(&jwt_key(), &t, NOW).unwrap_err(),
            Failure::BadToken(TokenProblem::BadSignature)
        );
    }
    let other = JwtKey {
        secret: Secret::new("another-secret"),
        ..jwt_key()
    };
    assert_eq!(
        jwt::verify(&other, &token, NOW).unwrap_err(),
        Failure::BadToken(TokenProblem::BadSignature)
    );
}

#[test]
fn jwt_algorithms_outside_the_allowed_list_are_refused() {
    let hs512 = JwtKey {
        algorithms: vec![Algorithm::HS512],
        ..jwt_key()
    };
    let token = sign_claims(&hs512, "{}");
    assert_eq!(
        jwt::verify(&jwt_key(), &token, NOW).unwrap_err(),
        Failure::BadToken(TokenProblem::AlgNotAllowed)
    );
    assert!(jwt::verify(&hs512, &token, NOW).is_ok());

    // alg none with and without a signature, unknown and asymmetric algs with an HMAC
    // signature over the shared secret (the classic key-confusion attempt).
    let payload = URL_SAFE_NO_PAD.encode("{}");
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"RS256"}"#,
        r#"{"alg":"HS257"}"#,
    ] {
        let message = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header));
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(jwt_key().secret.expose()),
            Algorithm::HS256,
        )
        .unwrap();
        for token in [format!("{message}."), format!("{message}.{sig}")] {
            let err = jwt::verify(&jwt_key(), &token, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    Failure::BadToken(TokenProblem::AlgNotAllowed) | Failure::MalformedToken
                ),
                "{header}: {err:?}"
            );
        }
    }
}

#[test]
fn jwt_malformed_shapes_are_malformed_token() {
    let token = sign_claims(&jwt_key(), "{}");
    let header_no_alg = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#));
    let with_crit = format!(
        "{}.e30.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#)
    );
    for t in [
        String::new(),
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{token}."),
        format!("{token}.x"),
        format!("{token}=="),
        "!!!.e30.sig".to_owned(),
        header_no_alg,
        with_crit,
    ] {
        let err = jwt::verify(&jwt_key(), &t, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                Failure::MalformedToken | Failure::BadToken(TokenProblem::BadSignature)
            ),
            "{t}: {err:?}"
        );
    }
    assert!(jwt::is_compact_shape(&token));
    assert!(!jwt::is_compact_shape("a.b"));
    assert!(!jwt::is_compact_shape("a..c"));
    assert!(!jwt::is_compact_shape("a.b.c d"));
}

#[test]
fn jwt_time_claims_are_checked_against_the_pinned_clock() {
    let strict = JwtKey {
        require_exp: true,
        ..jwt_key()
    };
    let leeway = strict.leeway_secs as i64;
    let now = NOW as i64;
    let ok = |claims: String| jwt::verify(&strict, &sign_claims(&strict, &claims), NOW);
    let problem = |claims: String| match ok(claims) {
        Err(Failure::BadToken(p)) => p,
        other => panic!("expected BadToken, got {other:?}"),
    };

    assert!(ok(format!(r#"{{"exp":{}}}"#, now + 10)).is_ok());
    assert!(
        ok(format!(r#"{{"exp":{}}}"#, now - leeway)).is_ok(),
        "within leeway"
    );
    assert_eq!(
        problem(format!(r#"{{"exp":{}}}"#, now - leeway - 1)),
        TokenProblem::Expired
    );
    assert_eq!(
        problem(r#"{"sub":"x"}"#.to_owned()),
        TokenProblem::MissingExp
    );
    assert_eq!(
        problem(r#"{"exp":null}"#.to_owned()),
        TokenProblem::MissingExp
    );
    assert_eq!(
        problem(r#""just a string""#.to_owned()),
        TokenProblem::MissingExp
    );
    let exp = now + 600;
    assert!(ok(format!(r#"{{"exp":{exp},"nbf":{}}}"#, now + leeway)).is_ok());
    assert_eq!(
        problem(format!(r#"{{"exp":{exp},"nbf":{}}}"#, now + leeway + 1)),
        TokenProblem::NotYetValid
    );
    assert!(ok(format!(r#"{{"exp":{exp},"iat":{}}}"#, now + leeway)).is_ok());
    assert_eq!(
        problem(format!(r#"{{"exp":{exp},"iat":{}}}"#, now + leeway + 1)),
        TokenProblem::IssuedInFuture
    );
    // A NumericDate is an integer in range: fractions, exponents and huge values are
    // malformed — read as "never expires" they would make a token valid forever.
    for claims in [
        format!(r#"{{"exp":{exp}.75,"iat":{now}}}"#),
        format!(r#"{{"exp":{exp},"iat":{now}.5}}"#),
        format!(r#"{{"exp":{exp},"nbf":1e9}}"#),
        r#"{"exp":1e30}"#.to_owned(),
        r#"{"exp":18446744073709551616}"#.to_owned(),
        r#"{"exp":99999999999999999999}"#.to_owned(),
        r#"{"exp":253402300800}"#.to_owned(),
        r#"{"exp":999999999999999999}"#.to_owned(),
        r#"{"exp":9223372036854775808}"#.to_owned(),
        r#"{"exp":-1}"#.to_owned(),
    ] {
        assert_eq!(
            problem(claims.clone()),
            TokenProblem::MalformedClaims,
            "{claims}"
        );
    }
    for claims in [
        r#"{"exp":"1700000600"}"#.to_owned(),
        format!(r#"{{"exp":{exp},"nbf":true}}"#),
        format!(r#"{{"exp":{exp},"iat":[1]}}"#),
        format!(r#"{{"exp":{exp},"jti":7}}"#),
        format!(r#"{{"exp":1,"exp":{exp}}}"#),
    ] {
        assert_eq!(problem(claims), TokenProblem::MalformedClaims);
    }

    let verified = ok(format!(r#"{{"exp":{exp},"iat":{now},"jti":"j-1"}}"#)).unwrap();
    assert_eq!(verified.iat, Some(now));
    assert_eq!(verified.jti.as_deref(), Some("j-1"));
    assert!(
        !format!("{verified:?}").contains(&exp.to_string()),
        "payload not printed"
    );
}

#[test]
fn jwt_payload_that_is_not_json_is_malformed_claims() {
    let key = jwt_key();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
        URL_SAFE_NO_PAD.encode("ticketNo=1")
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(key.secret.expose()),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        jwt::verify(&key, &format!("{message}.{sig}"), NOW).unwrap_err(),
        Failure::BadToken(TokenProblem::MalformedClaims)
    );
}

// ---------------------------------------------------------------- full stacks

fn all_stacks() -> Vec<Vec<Layer>> {
    use Layer::*;
    vec![
        vec![Form, Aes],
        vec![Token, Jwt],
        vec![Bearer, Jwt],
        vec![Token, Jwt, Aes],
        vec![Form, Aes, Jwt],
        vec![Form, Jwt],
        vec![Form, Jwt, Aes],
        vec![Bearer, Jwt, Aes],
        vec![Aes],
        vec![Jwt],
        vec![Aes, Jwt],
        vec![Jwt, Aes],
        vec![Form],
    ]
}

#[test]
fn every_stack_round_trips_byte_for_byte_in_both_shapes() {
    let keys = peer();
    for stack in all_stacks() {
        assert!(validate_stack(&stack, &keys).is_empty(), "{stack:?}");
        for shape in [BodyShape::Form, BodyShape::Json] {
            let sealed = seal(&stack, &keys, TICKET_PLAIN.as_bytes(), shape)
                .unwrap_or_else(|e| panic!("{stack:?} {shape:?}: {e:?}"));
            let opened = open_sealed(&stack, &keys, &sealed)
                .unwrap_or_else(|e| panic!("{stack:?} {shape:?}: {e:?}"));
            assert_eq!(opened.plain, TICKET_PLAIN.as_bytes(), "{stack:?} {shape:?}");
            assert_eq!(
                opened.ids,
                crate::guard::fields::Ids::parse(TICKET_PLAIN.as_bytes())
            );
            assert_eq!(opened.ids.userid.as_deref(), Some("9054233544"));
            let expected_shape = if stack[0] == Layer::Form {
                shape
            } else {
                BodyShape::Json
            };
            assert_eq!(opened.shape, expected_shape, "{stack:?}");
        }
    }
}

#[test]
fn sealed_wire_shapes_look_like_the_spec() {
    let keys = peer();
    let plain = TICKET_PLAIN.as_bytes();

    let form = seal(&[Layer::Form, Layer::Aes], &keys, plain, BodyShape::Form).unwrap();
    assert_eq!(form.content_type, "application/x-www-form-urlencoded");
    let text = std::str::from_utf8(&form.body).unwrap();
    assert!(text.starts_with("agId=BSK&encData="), "{text}");
    assert!(
        !text.contains('+') && !text.contains('/'),
        "base64 is percent-encoded: {text}"
    );

    let json = seal(&[Layer::Form, Layer::Aes], &keys, plain, BodyShape::Json).unwrap();
    assert_eq!(json.content_type, "application/json");
    let v: Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(v["agId"], "BSK");
    assert_eq!(
        v["encData"].as_str(),
        Some(aes::encrypt(&spec_key(), plain).as_str())
    );

    let token = seal(&[Layer::Token, Layer::Jwt], &keys, plain, BodyShape::Json).unwrap();
    let v: Value = serde_json::from_slice(&token.body).unwrap();
    assert_eq!(v["passcode"], "376423");
    assert!(jwt::is_compact_shape(v["token"].as_str().unwrap()));

    let bearer = seal(&[Layer::Bearer, Layer::Jwt], &keys, plain, BodyShape::Json).unwrap();
    assert!(bearer
        .authorization
        .as_deref()
        .unwrap()
        .starts_with("Bearer ey"));
    assert_eq!(bearer.body, br#"{"passcode":"376423"}"#);
    let no_passcode = PeerKeys {
        passcode: None,
        ..peer()
    };
    let bearer = seal(
        &[Layer::Bearer, Layer::Jwt],
        &no_passcode,
        plain,
        BodyShape::Json,
    )
    .unwrap();
    assert!(bearer.body.is_empty());

    // aes inside jwt: the claims are {"encData": "<base64>"}.
    let nested = seal(
        &[Layer::Token, Layer::Jwt, Layer::Aes],
        &keys,
        plain,
        BodyShape::Json,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&nested.body).unwrap();
    let claims_b64 = v["token"].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).unwrap()).unwrap();
    assert_eq!(
        claims["encData"].as_str(),
        Some(aes::encrypt(&spec_key(), plain).as_str())
    );

    // jwt inside aes: the plaintext is the bare compact token.
    let inner = seal(
        &[Layer::Form, Layer::Aes, Layer::Jwt],
        &keys,
        plain,
        BodyShape::Json,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&inner.body).unwrap();
    let token = aes::decrypt(&keys.aes, v["encData"].as_str().unwrap(), |_| true).unwrap();
    assert!(jwt::is_compact_shape(std::str::from_utf8(&token).unwrap()));
}

#[test]
fn nested_stacks_report_jwt_replay_claims() {
    let keys = peer();
    let plain = format!(r#"{{"iat":{NOW},"jti":"abc-1","ticketNo":20221202153322882}}"#);
    for stack in [
        vec![Layer::Token, Layer::Jwt],
        vec![Layer::Form, Layer::Aes, Layer::Jwt],
    ] {
        let sealed = seal(&stack, &keys, plain.as_bytes(), BodyShape::Json).unwrap();
        let opened = open_sealed(&stack, &keys, &sealed).unwrap();
        assert_eq!(opened.jwt_iat, Some(NOW as i64));
        assert_eq!(opened.jwt_jti.as_deref(), Some("abc-1"));
        assert_eq!(opened.plain, plain.as_bytes());
    }
}

#[test]
fn chaining_accepts_a_json_string_an_object_field_or_bare_text() {
    let keys = peer();
    let ct = aes::encrypt(&spec_key(), TICKET_PLAIN.as_bytes());
    for b in [
        ct.clone(),
        format!("  {ct}\r\n"),
        format!("\"{ct}\""),
        format!(r#"{{"encData": "{ct}", "other": 1}}"#),
    ] {
        let opened = open(&[Layer::Aes], &keys, &body(b.as_bytes()), NOW).unwrap();
        assert_eq!(opened.plain, TICKET_PLAIN.as_bytes(), "{b}");
    }
    let token = sign_claims(&jwt_key(), TICKET_PLAIN);
    for b in [
        token.clone(),
        format!("\"{token}\""),
        format!(r#"{{"token": "{token}"}}"#),
    ] {
        let opened = open(&[Layer::Jwt], &keys, &body(b.as_bytes()), NOW).unwrap();
        assert_eq!(opened.plain, TICKET_PLAIN.as_bytes(), "{b}");
    }
    // jwt claims carrying the ciphertext as a bare JSON string.
    let claims = format!("\"{ct}\"");
    let t = sign_claims(&jwt_key(), &claims);
    let opened = open(&[Layer::Jwt, Layer::Aes], &keys, &body(t.as_bytes()), NOW).unwrap();
    assert_eq!(opened.plain, TICKET_PLAIN.as_bytes());
    // jwt claims carrying it in `encData` (read beside the time claims): as written, with
    // every character escaped, and among other claims. An `encData` that is not a string
    // is not taken for one.
    let escaped: String = ct.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    for claims in [
        format!(r#"{{"encData":"{ct}"}}"#),
        format!(r#"{{"encData":"{escaped}"}}"#),
        format!(r#"{{"iat":{NOW},"encData":"{ct}","jti":"j1","n":[1,{{"a":"b"}}]}}"#),
    ] {
        let t = sign_claims(&jwt_key(), &claims);
        let opened = open(&[Layer::Jwt, Layer::Aes], &keys, &body(t.as_bytes()), NOW).unwrap();
        assert_eq!(opened.plain, TICKET_PLAIN.as_bytes(), "{claims}");
    }
    for claims in [
        r#"{"encData":12}"#,
        r#"{"encData":{"x":"y"}}"#,
        r#"{"encData":null}"#,
        r#"{"encdata":"x"}"#,
    ] {
        let t = sign_claims(&jwt_key(), claims);
        let r = open(&[Layer::Jwt, Layer::Aes], &keys, &body(t.as_bytes()), NOW);
        assert!(
            matches!(r, Err(Failure::Undecryptable(_))),
            "{claims}: {r:?}"
        );
    }
    // aes plaintext carrying the token inside {"token": ...}.
    let wrapped = aes::encrypt(&spec_key(), format!(r#"{{"token":"{token}"}}"#).as_bytes());
    let opened = open(
        &[Layer::Aes, Layer::Jwt],
        &keys,
        &body(wrapped.as_bytes()),
        NOW,
    )
    .unwrap();
    assert_eq!(opened.plain, TICKET_PLAIN.as_bytes());
}

#[test]
fn aes_before_jwt_must_decrypt_to_a_token() {
    let keys = peer();
    let ct = aes::encrypt(&spec_key(), TICKET_PLAIN.as_bytes());
    let body = form_body("BSK", &percent_encode(&ct));
    let err = open(
        &[Layer::Form, Layer::Aes, Layer::Jwt],
        &keys,
        &form_request(&body),
        NOW,
    )
    .unwrap_err();
    assert_eq!(err, Failure::Undecryptable(Undecryptable::NotJson));
}

#[test]
fn stacks_with_jwt_refuse_bad_tokens_end_to_end() {
    let keys = peer();
    let expired = JwtKey {
        require_exp: true,
        ..jwt_key()
    };
    let strict_keys = PeerKeys {
        jwt: Some(expired.clone()),
        ..peer()
    };
    let old = sign_claims(&expired, &format!(r#"{{"exp":{}}}"#, NOW - 3600));
    let early = sign_claims(
        &expired,
        &format!(r#"{{"exp":{},"nbf":{}}}"#, NOW + 7200, NOW + 3600),
    );
    let b = token_body("376423", &old);
    assert_eq!(
        open(&[Layer::Token, Layer::Jwt], &strict_keys, &body(&b), NOW).unwrap_err(),
        Failure::BadToken(TokenProblem::Expired)
    );
    let b = token_body("376423", &early);
    assert_eq!(
        open(&[Layer::Token, Layer::Jwt], &strict_keys, &body(&b), NOW).unwrap_err(),
        Failure::BadToken(TokenProblem::NotYetValid)
    );
    // A token sealed inside AES but signed with another secret.
    let stranger = PeerKeys {
        jwt: Some(JwtKey {
            secret: Secret::new("not-the-shared-secret"),
            ..jwt_key()
        }),
        ..peer()
    };
    let stack = [Layer::Form, Layer::Aes, Layer::Jwt];
    let sealed = seal(&stack, &stranger, TICKET_PLAIN.as_bytes(), BodyShape::Form).unwrap();
    assert_eq!(
        open_sealed(&stack, &keys, &sealed).unwrap_err(),
        Failure::BadToken(TokenProblem::BadSignature)
    );
}

#[test]
fn seal_refuses_non_json_plaintext() {
    assert_eq!(
        seal(
            &[Layer::Form, Layer::Aes],
            &peer(),
            b"plain text",
            BodyShape::Form
        )
        .unwrap_err(),
        Failure::Undecryptable(Undecryptable::NotJson)
    );
}

#[test]
fn missing_keys_are_misconfigured_at_runtime() {
    let bare = PeerKeys {
        agid: "BSK".into(),
        passcode: None,
        jwt: None,
        aes: Vec::new(),
    };
    let body = form_body("BSK", &percent_encode(SPEC_CT));
    assert_eq!(
        open(&[Layer::Form, Layer::Aes], &bare, &form_request(&body), NOW).unwrap_err(),
        Failure::Misconfigured("aes keys")
    );
    let token = sign_claims(&jwt_key(), "{}");
    assert_eq!(
        open(&[Layer::Jwt], &bare, &self::body(token.as_bytes()), NOW).unwrap_err(),
        Failure::Misconfigured("jwt key")
    );
    assert_eq!(
        seal(&[Layer::Form, Layer::Aes], &bare, b"{}", BodyShape::Form).unwrap_err(),
        Failure::Misconfigured("aes keys")
    );
    for stack in [
        vec![],
        vec![Layer::Aes, Layer::Form],
        vec![Layer::Token],
        vec![Layer::Aes, Layer::Aes],
    ] {
        // `open` takes only a `Stack`, which cannot hold these; `seal` takes any part of
        // one and refuses them when it runs.
        assert!(Stack::new(&stack).is_err(), "{stack:?}");
        assert_eq!(
            seal(&stack, &peer(), b"{}", BodyShape::Json).unwrap_err(),
            Failure::Misconfigured("layer stack"),
            "{stack:?}"
        );
    }
}

// ---------------------------------------------------------------- config-facing helpers

#[test]
fn validate_stack_reports_every_problem() {
    use Layer::*;
    let keys = peer();
    assert_eq!(validate_stack(&[], &keys).len(), 1);
    assert_eq!(validate_stack(&[Aes, Form], &keys).len(), 1);
    assert_eq!(
        validate_stack(&[Jwt, Token], &keys).len(),
        2,
        "not outermost, no jwt after"
    );
    assert_eq!(validate_stack(&[Token], &keys).len(), 1);
    assert_eq!(validate_stack(&[Bearer, Aes, Jwt], &keys).len(), 1);
    assert_eq!(validate_stack(&[Aes, Jwt, Aes], &keys).len(), 1);
    let bare = PeerKeys {
        agid: String::new(),
        passcode: None,
        jwt: None,
        aes: Vec::new(),
    };
    let problems = validate_stack(&[Form, Aes, Jwt], &bare);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert_eq!(validate_stack(&[Token, Jwt], &bare).len(), 2);
    let weird_jwt = PeerKeys {
        jwt: Some(JwtKey {
            secret: Secret::new(""),
            algorithms: vec![Algorithm::RS256],
            require_exp: true,
            leeway_secs: 0,
        }),
        ..peer()
    };
    assert_eq!(validate_stack(&[Bearer, Jwt], &weird_jwt).len(), 2);
    let no_alg = PeerKeys {
        jwt: Some(JwtKey {
            algorithms: Vec::new(),
            ..jwt_key()
        }),
        ..peer()
    };
    assert_eq!(validate_stack(&[Jwt], &no_alg).len(), 1);
}

#[test]
fn layer_names_round_trip() {
    for layer in Layer::ALL {
        assert_eq!(Layer::parse(layer.name()), Some(layer));
        assert_eq!(layer.to_string(), layer.name());
    }
    assert_eq!(Layer::parse("AES"), None);
    assert_eq!(Layer::parse("none"), None);
    assert_eq!(Layer::parse(""), None);
}

#[test]
fn failure_reasons_are_a_bounded_snake_case_set() {
    let failures = [
        Failure::Undecryptable(Undecryptable::MalformedForm),
        Failure::Undecryptable(Undecryptable::BadBase64),
        Failure::Undecryptable(Undecryptable::BadLength),
        Failure::Undecryptable(Undecryptable::BadPadding),
        Failure::Undecryptable(Undecryptable::NotUtf8),
        Failure::Undecryptable(Undecryptable::NotJson),
        Failure::WrongAgid,
        Failure::BadPasscode,
        Failure::MalformedToken,
        Failure::BadToken(TokenProblem::BadSignature),
        Failure::BadToken(TokenProblem::AlgNotAllowed),
        Failure::BadToken(TokenProblem::Expired),
        Failure::BadToken(TokenProblem::NotYetValid),
        Failure::BadToken(TokenProblem::IssuedInFuture),
        Failure::BadToken(TokenProblem::MissingExp),
        Failure::BadToken(TokenProblem::MalformedClaims),
        Failure::Misconfigured("aes keys"),
    ];
    let mut seen = std::collections::HashSet::new();
    for f in &failures {
        let reason = f.reason();
        assert!(
            reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{reason}"
        );
        assert!(seen.insert(reason), "duplicate reason {reason}");
    }
    assert_eq!(
        Failure::Undecryptable(Undecryptable::BadPadding).to_string(),
        "envelope could not be opened: bad padding"
    );
}

#[test]
fn debug_output_never_shows_keys_passcodes_tokens_or_bodies() {
    let keys = peer();
    let printed = format!("{keys:?}");
    for secret in [
        "IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W",
        "V0ZMZO6WZ45KY2PL",
        "376423",
        "bsk-shared-hs256-secret",
    ] {
        assert!(!printed.contains(secret), "{printed}");
    }
    let sealed = seal(
        &[Layer::Bearer, Layer::Jwt],
        &keys,
        TICKET_PLAIN.as_bytes(),
        BodyShape::Json,
    )
    .unwrap();
    let auth = sealed.authorization.clone().unwrap();
    let signature = auth.rsplit('.').next().unwrap();
    let printed = format!("{sealed:?}");
    assert!(
        !printed.contains(signature) && !printed.contains("376423"),
        "{printed}"
    );
    let req = Incoming {
        content_type: None,
        authorization: Some(&auth),
        passcode_header: Some("376423"),
        body: TICKET_PLAIN.as_bytes(),
    };
    let printed = format!("{req:?}");
    assert!(
        !printed.contains(signature) && !printed.contains("376423"),
        "{printed}"
    );
    assert!(!printed.contains("20221202153322882"), "{printed}");
    let opened = open(&[Layer::Bearer, Layer::Jwt], &keys, &req, NOW).unwrap();
    let printed = format!("{opened:?}");
    assert!(!printed.contains("20221202153322882"), "{printed}");
}

#[test]
fn hostile_inputs_never_panic() {
    let keys = peer();
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"{".to_vec(),
        b"\"".to_vec(),
        vec![0xff; 64],
        b"agId=BSK&encData=%ff%fe".to_vec(),
        b"agId=BSK&encData=====".to_vec(),
        br#"{"agId":"BSK","encData":"\ud800"}"#.to_vec(),
        br#"{"passcode":"376423","token":"..."}"#.to_vec(),
        br#"{"passcode":"376423","token":"e30.e30.e30"}"#.to_vec(),
        "é.é.é".as_bytes().to_vec(),
    ];
    inputs.push(format!("agId=BSK&encData={}", "A".repeat(4097)).into_bytes());
    for stack in all_stacks() {
        for input in &inputs {
            for ct in [
                None,
                Some("application/json"),
                Some("application/x-www-form-urlencoded"),
            ] {
                let req = Incoming {
                    content_type: ct,
                    authorization: Some("Bearer ..."),
                    passcode_header: Some("376423"),
                    body: input,
                };
                assert!(
                    open(&stack, &keys, &req, NOW).is_err(),
                    "{stack:?} {input:?}"
                );
            }
        }
    }
}
