//! `passcode` layer: the peer's passcode carried inside the opened JSON itself, as deployed
//! department code receives the API-7 pull (`encData` = AES of
//! `{"passcode": "...", "fromdate": ..., "todate": ...}`); checked in constant time.
//!
//! It comes right after `aes` or `jwt` as the last layer (e.g. `[form, aes, passcode]`), so
//! what it reads is the JSON the peer encrypted or signed. The JSON then goes on byte for
//! byte, `passcode` field included: nothing is removed or re-serialised.
//!
//! - The passcode is a JSON string, as deployed code sends it. A JSON number is also
//!   accepted and compared by its exact characters, the rule of the `token` layer
//!   (`376423` matches the passcode `376423`; `376423.0` and `3.76423e5` do not).
//! - A missing passcode, a wrong one, one given twice, one that is not a string or number,
//!   and JSON that is not an object all answer [`Failure::BadPasscode`]. That 401 tells the
//!   caller the ciphertext opened to JSON; only a party holding the AES key gets that far.
//! - Sealing adds nothing: an answer does not carry the passcode back, and JSON sealed for
//!   a peer that expects one (egress) must already carry its `passcode` field. For the same
//!   reason a peer's reply to such an egress request is opened without this layer.
//!
//! ```
//! use bsk_sidecar::envelope::{passcode, Failure};
//! use bsk_sidecar::secret::Secret;
//!
//! let expected = Secret::new("376423");
//! let pull = br#"{"passcode": "376423", "fromdate": "2022-12-10", "todate": "2022-12-22"}"#;
//! assert_eq!(passcode::open(Some(&expected), pull), Ok(()));
//! let wrong = br#"{"passcode": "000000", "fromdate": "2022-12-10", "todate": "2022-12-22"}"#;
//! assert_eq!(passcode::open(Some(&expected), wrong), Err(Failure::BadPasscode));
//! ```

use serde::Deserialize;
use serde_json::value::RawValue;

use super::token::passcode_text;
use super::Failure;
use crate::secret::Secret;

/// Checks the `passcode` field of the JSON object `json` against the peer's `passcode`.
/// No passcode configured for the peer means this layer cannot be used (`Misconfigured`).
pub fn open(passcode: Option<&Secret>, json: &[u8]) -> Result<(), Failure> {
    // Derived `Deserialize` refuses a duplicated `passcode`, so a second one cannot sneak by.
    #[derive(Deserialize)]
    struct Carrier<'a> {
        #[serde(borrow)]
        passcode: Option<&'a RawValue>,
    }

    let expected = passcode.ok_or(Failure::Misconfigured("passcode"))?;
    let json = json.trim_ascii();
    // A derived struct would also read a JSON array positionally: insist on an object.
    if json.first() != Some(&b'{') {
        return Err(Failure::BadPasscode);
    }
    let carrier: Carrier<'_> = serde_json::from_slice(json).map_err(|_| Failure::BadPasscode)?;
    let presented = carrier
        .passcode
        .and_then(passcode_text)
        .ok_or(Failure::BadPasscode)?;
    if expected.matches(presented.as_bytes()) {
        Ok(())
    } else {
        Err(Failure::BadPasscode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::aes::AesKey;
    use crate::envelope::jwt::JwtKey;
    use crate::envelope::{self, validate_stack, BodyShape, Incoming, Layer, PeerKeys, Stack};

    const PULL: &str = r#"{"passcode": "376423", "fromdate": "2022-12-10", "todate": "2022-12-22", "limit": 100, "offset": 0}"#;

    fn keys() -> PeerKeys {
        let mut jwt = JwtKey::new(Secret::new("bsk-shared-hs256-secret-0123456789"));
        jwt.require_exp = false;
        PeerKeys {
            agid: "BSK".into(),
            passcode: Some(Secret::new("376423")),
            jwt: Some(jwt),
            aes: vec![
                AesKey::new(b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", b"V0ZMZO6WZ45KY2PL").unwrap(),
            ],
        }
    }

    fn check(json: &str) -> Result<(), Failure> {
        open(keys().passcode.as_ref(), json.as_bytes())
    }

    #[test]
    fn the_right_passcode_as_a_string_or_its_exact_number() {
        assert_eq!(check(PULL), Ok(()));
        assert_eq!(
            check(r#"{"fromdate":"2022-12-10","passcode":376423}"#),
            Ok(())
        );
        assert_eq!(check(" \r\n{\"passcode\":\"376423\"}\r\n"), Ok(()));
    }

    #[test]
    fn anything_but_the_right_passcode_is_bad_passcode() {
        for json in [
            r#"{"passcode":"000000","fromdate":"2022-12-10"}"#,
            r#"{"passcode":"37642","fromdate":"2022-12-10"}"#,
            r#"{"passcode":"3764230"}"#,
            r#"{"passcode":" 376423"}"#,
            r#"{"passcode":""}"#,
            r#"{"passcode":376423.0}"#,
            r#"{"passcode":3.76423e5}"#,
            r#"{"passcode":null}"#,
            r#"{"passcode":["376423"]}"#,
            r#"{"passcode":{"value":"376423"}}"#,
            r#"{"passcode":true}"#,
            r#"{"Passcode":"376423"}"#,
            r#"{"fromdate":"2022-12-10","todate":"2022-12-22"}"#,
            r#"{"passcode":"376423","passcode":"000000"}"#,
            r#"{"passcode":"000000","passcode":"376423"}"#,
            r#"["376423"]"#,
            r#""376423""#,
            "376423",
            "{}",
            "",
        ] {
            assert_eq!(check(json), Err(Failure::BadPasscode), "{json}");
        }
    }

    #[test]
    fn a_peer_without_a_passcode_cannot_use_the_layer() {
        assert_eq!(
            open(None, PULL.as_bytes()),
            Err(Failure::Misconfigured("passcode"))
        );
        let no_passcode = PeerKeys {
            passcode: None,
            ..keys()
        };
        let problems = validate_stack(&[Layer::Form, Layer::Aes, Layer::Passcode], &no_passcode);
        assert_eq!(problems, ["`passcode` needs the peer's passcode"]);
    }

    #[test]
    fn it_comes_last_right_after_a_layer_that_yields_json() {
        use Layer::*;
        for good in [
            &[Form, Aes, Passcode][..],
            &[Aes, Passcode],
            &[Jwt, Passcode],
            &[Token, Jwt, Passcode],
            &[Bearer, Jwt, Passcode],
            &[Form, Aes, Jwt, Passcode],
        ] {
            assert_eq!(
                validate_stack(good, &keys()),
                Vec::<String>::new(),
                "{good:?}"
            );
        }
        for bad in [
            &[Passcode][..],
            &[Form, Passcode],
            &[Passcode, Aes],
            &[Form, Aes, Passcode, Jwt],
            &[Form, Passcode, Aes],
            &[Aes, Passcode, Passcode],
        ] {
            assert!(!validate_stack(bad, &keys()).is_empty(), "{bad:?}");
            // Nor can `open` be given one: only a valid `Stack` reaches it.
            assert_eq!(
                Stack::new(bad).map(|_| ()),
                Err(validate_stack(bad, &keys())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn form_aes_passcode_opens_to_the_exact_bytes_or_refuses() {
        let stack = [Layer::Form, Layer::Aes, Layer::Passcode];
        let open_sealed = |plain: &str| {
            let sealed = envelope::seal(&stack, &keys(), plain.as_bytes(), BodyShape::Form)?;
            let req = Incoming {
                content_type: Some(sealed.content_type),
                authorization: None,
                passcode_header: None,
                body: &sealed.body,
            };
            envelope::open(&Stack::new(&stack).unwrap(), &keys(), &req, 0).map(|o| o.plain)
        };
        // Sealing adds nothing; opening hands on every byte, the passcode included.
        assert_eq!(open_sealed(PULL), Ok(PULL.as_bytes().to_vec()));
        let wrong = PULL.replace("376423", "376424");
        assert_eq!(open_sealed(&wrong), Err(Failure::BadPasscode));
        let missing = r#"{"fromdate": "2022-12-10", "todate": "2022-12-22"}"#;
        assert_eq!(open_sealed(missing), Err(Failure::BadPasscode));
    }

    #[test]
    fn sealing_adds_no_passcode() {
        let keys = keys();
        let answer = br#"[{"userid":9054233544}]"#;
        let with = envelope::seal(
            &[Layer::Aes, Layer::Passcode],
            &keys,
            answer,
            BodyShape::Json,
        )
        .unwrap();
        let without = envelope::seal(&[Layer::Aes], &keys, answer, BodyShape::Json).unwrap();
        assert_eq!(with.body, without.body);
    }
}
