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

use serde::Deserialize;
use serde_json::value::RawValue;

use super::Failure;
use crate::guard::fields::{self, BorrowedStr};
use crate::secret::Secret;

/// Returns the token after checking the passcode. No passcode configured for the peer means
/// this layer cannot be used (`Misconfigured`); a body that is not such an object is
/// `MalformedToken`; a passcode that does not match is `BadPasscode`.
pub fn open<'a>(passcode: Option<&Secret>, body: &'a [u8]) -> Result<Cow<'a, str>, Failure> {
    // Derived `Deserialize` refuses duplicated fields, so a second `passcode` cannot sneak by.
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        passcode: &'a RawValue,
        #[serde(borrow)]
        token: BorrowedStr<'a>,
    }

    let expected = passcode.ok_or(Failure::Misconfigured("passcode"))?;
    // Read as text, checked as UTF-8 once (from bytes, the parser checks each string again),
    // 32 bytes at a time (`simdutf8`): the body is mostly the token.
    let text = simdutf8::basic::from_utf8(body).map_err(|_| Failure::MalformedToken)?;
    let body: Body<'_> = serde_json::from_str(text).map_err(|_| Failure::MalformedToken)?;
    let presented = passcode_text(body.passcode).ok_or(Failure::MalformedToken)?;
    if !expected.matches(presented.as_bytes()) {
        return Err(Failure::BadPasscode);
    }
    Ok(body.token.0)
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
/// text. Anything else (object, array, bool, null) is not a passcode.
pub(crate) fn passcode_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.as_bytes().first()? {
        b'"' => fields::string_of(raw.get()),
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(text)),
        _ => None,
    }
}
