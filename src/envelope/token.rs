//! `token` layer: the section 11 body `{"passcode": "...", "token": "<JWT>"}`; checks the
//! peer's passcode in constant time and hands the JWT to the `jwt` layer.
//!
//! The passcode may arrive as a JSON string or a JSON number; a number is compared by its
//! exact characters (`376423` matches the passcode `376423`, `376423.0` does not).
//!
//! ```
//! use bsk_sidecar::envelope::token;
//! use bsk_sidecar::secret::Secret;
//!
//! let passcode = Secret::new("376423");
//! let body = br#"{"passcode": 376423, "token": "aaa.bbb.ccc"}"#;
//! assert_eq!(token::open(Some(&passcode), body).unwrap(), "aaa.bbb.ccc");
//! ```

use std::borrow::Cow;

use super::Failure;
use crate::guard::fields::{self, Object};
use crate::guard::payload;
use crate::secret::Secret;

/// Returns the token after checking the passcode. No passcode configured for the peer means
/// this layer cannot be used (`Misconfigured`); a body that is not such an object is
/// `MalformedToken`; a passcode that does not match is `BadPasscode`.
///
/// The body is read by the one validator every payload passes (`payload::read_into`,
/// without the ingress bounds): a JSON object, no key twice at any depth (so a second
/// `passcode` cannot sneak by, under any spelling of its name), numbers within an f64.
/// The token is most of the body; the validator finds a long string's end with a
/// vectorised search.
pub fn open<'a>(passcode: Option<&Secret>, body: &'a [u8]) -> Result<Cow<'a, str>, Failure> {
    let expected = passcode.ok_or(Failure::Misconfigured("passcode"))?;
    let mut object = Object::default();
    let is_object =
        payload::read_into(body, None, &mut object).map_err(|_| Failure::MalformedToken)?;
    if !is_object {
        return Err(Failure::MalformedToken);
    }
    let (Some(presented), Some(token)) = (object.get("passcode"), object.get("token")) else {
        return Err(Failure::MalformedToken);
    };
    let presented = passcode_text(presented.get()).ok_or(Failure::MalformedToken)?;
    let token = fields::string_of(token.get()).ok_or(Failure::MalformedToken)?;
    if !expected.matches(presented.as_bytes()) {
        return Err(Failure::BadPasscode);
    }
    Ok(token)
}

/// Builds `{"passcode":"…","token":"…"}`. The passcode must be UTF-8 to go into JSON.
pub fn seal(passcode: &Secret, token: &str) -> Result<Vec<u8>, Failure> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        passcode: &'a str,
        token: &'a str,
    }
    let passcode =
        std::str::from_utf8(passcode.expose()).map_err(|_| Failure::Misconfigured("passcode"))?;
    serde_json::to_vec(&Body { passcode, token }).map_err(|_| Failure::Misconfigured("passcode"))
}

/// The characters of a presented passcode: a JSON string's content or a JSON number's exact
/// text, from one checked JSON value's text. Anything else (object, array, bool, null) is
/// not a passcode.
pub(crate) fn passcode_text(text: &str) -> Option<Cow<'_, str>> {
    match text.as_bytes().first()? {
        b'"' => fields::string_of(text),
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(text)),
        _ => None,
    }
}
