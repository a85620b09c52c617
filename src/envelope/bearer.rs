//! `bearer` layer: the JWT comes from `Authorization: Bearer <JWT>` and the body is left
//! alone; when the peer has a passcode it must also be presented, in the `X-Passcode` header
//! or as a `passcode` field of a JSON-object body.
//!
//! ```
//! use bsk_sidecar::envelope::bearer;
//!
//! let token = bearer::open(None, Some("bearer aaa.bbb.ccc"), None, b"").unwrap();
//! assert_eq!(token, "aaa.bbb.ccc");
//! ```

use serde::Deserialize;
use serde_json::value::RawValue;

use super::token::passcode_text;
use super::Failure;
use crate::secret::Secret;

/// Returns the bearer token. A missing or non-Bearer `Authorization` is `MalformedToken`.
/// With a passcode configured, every passcode presented (header and body) must match and at
/// least one must be presented, else `BadPasscode`; without one, presented passcodes are
/// ignored.
pub fn open(
    passcode: Option<&Secret>,
    authorization: Option<&str>,
    passcode_header: Option<&str>,
    body: &[u8],
) -> Result<String, Failure> {
    let token = bearer_token(authorization.ok_or(Failure::MalformedToken)?)
        .ok_or(Failure::MalformedToken)?;
    if let Some(expected) = passcode {
        let mut presented = false;
        if let Some(header) = passcode_header {
            presented = true;
            if !expected.matches(header.as_bytes()) {
                return Err(Failure::BadPasscode);
            }
        }
        if let Some(in_body) = body_passcode(body) {
            presented = true;
            if !in_body.is_some_and(|text| expected.matches(text.as_bytes())) {
                return Err(Failure::BadPasscode);
            }
        }
        if !presented {
            return Err(Failure::BadPasscode);
        }
    }
    Ok(token.to_owned())
}

/// Body and `Authorization` value for a bearer request: the body is `{"passcode":"…"}` when
/// the peer has a passcode, else empty.
pub fn seal(passcode: Option<&Secret>, token: &str) -> Result<(Vec<u8>, String), Failure> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        passcode: &'a str,
    }
    let body = match passcode {
        None => Vec::new(),
        Some(secret) => {
            let passcode = std::str::from_utf8(secret.expose())
                .map_err(|_| Failure::Misconfigured("passcode"))?;
            serde_json::to_vec(&Body { passcode })
                .map_err(|_| Failure::Misconfigured("passcode"))?
        }
    };
    Ok((body, format!("Bearer {token}")))
}

/// The token of an `Authorization` value whose scheme is `Bearer` (any case).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once([' ', '\t'])?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `passcode` field of a JSON-object body: `None` when there is none (the body is not
/// a JSON object, or has no such field), `Some(None)` when one is there but unreadable
/// (duplicated, or not a string or number) and so counts as wrong.
fn body_passcode(body: &[u8]) -> Option<Option<String>> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        passcode: Option<&'a RawValue>,
    }
    if !body.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    match serde_json::from_slice::<Body<'_>>(body) {
        Ok(Body { passcode }) => passcode.map(|raw| passcode_text(raw).map(|t| t.into_owned())),
        // Valid JSON of the wrong structure (e.g. two `passcode` fields): present but unreadable.
        Err(e) if e.is_data() => Some(None),
        // Not JSON after all: an ordinary body without a passcode.
        Err(_) => None,
    }
}
