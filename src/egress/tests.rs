//! Unit tests for the egress pieces that need no sockets.

use crate::envelope::jwt::{self, JwtKey};
use crate::secret::Secret;

#[test]
fn sign_exp_splices_time_claims_without_touching_other_bytes() {
    let claims = br#"{"userid":9054233544,"ticketNo":20221202153322882}"#;
    let out = jwt::with_times(claims, 100, 400).unwrap();
    assert_eq!(
        out,
        br#"{"userid":9054233544,"ticketNo":20221202153322882,"iat":100,"exp":400}"#
    );
    // Claims already present are kept, never duplicated.
    let out = jwt::with_times(br#"{"exp":5,"a":1}"#, 100, 400).unwrap();
    assert_eq!(out, br#"{"exp":5,"a":1,"iat":100}"#);
    assert_eq!(
        jwt::with_times(b"{ }", 1, 2).unwrap(),
        br#"{ "iat":1,"exp":2}"#
    );
    // An array (an API-7 answer) cannot carry claims: unchanged. Not JSON: refused.
    assert_eq!(jwt::with_times(b"[1]", 1, 2).unwrap(), b"[1]");
    assert!(jwt::with_times(b"{oops", 1, 2).is_err());
}

#[test]
fn a_peer_requiring_exp_accepts_what_sign_exp_seals() {
    let key = JwtKey::new(Secret::new("egress-unit-test-secret-0123456789"));
    let claims = jwt::with_times(
        br#"{"ticketNo":20221202153322882}"#,
        1_700_000_000,
        1_700_000_300,
    )
    .unwrap();
    let token = jwt::sign(&key, &claims).unwrap();
    let v = jwt::verify(&key, &token, 1_700_000_100).unwrap();
    assert_eq!(v.iat, Some(1_700_000_000));
    assert!(jwt::verify(&key, &token, 1_700_001_000).is_err(), "expired");
}

/// A peer that wants its passcode inside the ciphertext (`[form, aes, passcode]`) answers
/// without one, as the sidecar itself does: the reply still opens for the application.
#[test]
fn replies_on_a_passcode_stack_open_without_a_passcode() {
    use bytes::Bytes;
    use http::Response;

    use super::exchange::open_reply;
    use crate::config::egress::PeerTls;
    use crate::config::{Peer, Reply};
    use crate::envelope::{self, aes::AesKey, BodyShape, Layer, PeerKeys};

    let peer = Peer {
        name: "bsk".into(),
        header: http::HeaderValue::from_static("bsk"),
        keys: PeerKeys {
            agid: "BSK".into(),
            passcode: Some(Secret::new("376423")),
            jwt: None,
            aes: vec![
                AesKey::new(b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", b"V0ZMZO6WZ45KY2PL").unwrap(),
            ],
        },
        allow: None,
        rate: None,
        url: None,
        tls: PeerTls::default(),
        sign_exp: None,
        max_token_lifetime: crate::config::settings::DEFAULT_TOKEN_LIFETIME,
        short_jwt_secret: false,
        client_cert: None,
    };
    let stack = [Layer::Form, Layer::Aes, Layer::Passcode];
    let answer = br#"{"status":"S","statusCode":"200"}"#;
    let sealed = envelope::seal(&stack, &peer.keys, answer, BodyShape::Form).unwrap();
    let resp = Response::builder()
        .header("content-type", sealed.content_type)
        .body(Bytes::from(sealed.body))
        .unwrap();
    let opened = open_reply(
        &stack,
        &peer,
        Reply::Open,
        resp,
        &crate::clock::Clock::system(),
    )
    .expect("reply opens");
    assert_eq!(opened.body().as_ref(), answer);
}
