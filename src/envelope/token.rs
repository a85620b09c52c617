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
use crate::guard::payload;
use crate::secret::Secret;

/// Returns the token after checking the passcode. No passcode configured for the peer means
/// this layer cannot be used (`Misconfigured`); a body that is not such an object is
/// `MalformedToken`; a passcode that does not match is `BadPasscode`.
pub fn open<'a>(passcode: Option<&Secret>, body: &'a [u8]) -> Result<Cow<'a, str>, Failure> {
    let expected = passcode.ok_or(Failure::Misconfigured("passcode"))?;
    // Read as text, checked as UTF-8 once (from bytes, the parser checks each string again),
    // 32 bytes at a time (`simdutf8`): the body is mostly the token.
    let text = simdutf8::basic::from_utf8(body).map_err(|_| Failure::MalformedToken)?;
    let (presented, token) = match plain_body(text) {
        Some((passcode, token)) => (Cow::Borrowed(passcode), Cow::Borrowed(token)),
        None => parsed_body(text)?,
    };
    if !expected.matches(presented.as_bytes()) {
        return Err(Failure::BadPasscode);
    }
    Ok(token)
}

/// The presented passcode's text and the token, read by the JSON parser: any spelling
/// JSON allows (escapes, a number for a passcode, other keys beside them, the two as a
/// list), and its verdict on any other.
fn parsed_body(text: &str) -> Result<(Cow<'_, str>, Cow<'_, str>), Failure> {
    // Derived `Deserialize` refuses duplicated fields, so a second `passcode` cannot sneak by.
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        passcode: &'a RawValue,
        #[serde(borrow)]
        token: BorrowedStr<'a>,
    }
    let body: Body<'_> = serde_json::from_str(text).map_err(|_| Failure::MalformedToken)?;
    let presented = passcode_text(body.passcode).ok_or(Failure::MalformedToken)?;
    Ok((presented, body.token.0))
}

/// The body as peers write it — `{"passcode":"…","token":"…"}`, either key first, JSON's
/// whitespace anywhere between, both values strings without an escape or a control
/// character — read without the JSON parser: the passcode's and the token's text. The
/// token is most of the body, and the parser crossed it eight bytes at a time, where a
/// vectorised search crosses it thirty-two at a time. `None` for any other text, which
/// [`parsed_body`] reads and judges; what this reads, the parser reads alike.
fn plain_body(text: &str) -> Option<(&str, &str)> {
    let bytes = text.as_bytes();
    let space = |at: usize| payload::space_end(bytes, at);
    let expect = |at: usize, byte: u8| (bytes.get(at) == Some(&byte)).then_some(at + 1);
    // A string from its opening quote at `at`, ended by its closing quote (not by a
    // backslash or a control character): its text's bounds, and where it ends.
    let string = |at: usize| {
        let from = expect(at, b'"')?;
        let to = payload::plain_run_end(bytes, from);
        expect(to, b'"').map(|after| (from, to, after))
    };
    let mut passcode = None;
    let mut token = None;
    let mut at = expect(space(0), b'{')?;
    for close in [b',', b'}'] {
        let (key_from, key_to, after_key) = string(space(at))?;
        let colon = expect(space(after_key), b':')?;
        let (from, to, after) = string(space(colon))?;
        let slot = match bytes.get(key_from..key_to)? {
            b"passcode" => &mut passcode,
            b"token" => &mut token,
            _ => return None,
        };
        if slot.replace(text.get(from..to)?).is_some() {
            return None;
        }
        at = expect(space(after), close)?;
    }
    if space(at) != bytes.len() {
        return None;
    }
    Some((passcode?, token?))
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
        b'"' => fields::string_of(text),
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the fast read takes from `text`, the parser reads the same from it.
    fn agrees(text: &str) -> bool {
        match plain_body(text) {
            None => true,
            Some((p, t)) => matches!(parsed_body(text), Ok((pp, tt)) if pp == p && tt == t),
        }
    }

    #[test]
    fn the_body_as_peers_write_it_is_read_without_the_parser_and_alike() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJhIjoxfQ.c2ln";
        for text in [
            format!(r#"{{"passcode":"376423","token":"{token}"}}"#),
            format!(r#"{{"token":"{token}","passcode":"376423"}}"#),
            format!(" {{ \"passcode\" :\t\"376423\" ,\r\n \"token\": \"{token}\" }}\n"),
            r#"{"passcode":"","token":""}"#.to_owned(),
            r#"{"passcode":"पासकोड","token":"t"}"#.to_owned(),
        ] {
            assert!(plain_body(&text).is_some(), "{text}");
            assert!(agrees(&text), "{text}");
        }
        assert_eq!(
            open(
                Some(&Secret::new("376423")),
                format!(r#"{{"token":"{token}","passcode":"376423"}}"#).as_bytes()
            ),
            Ok(Cow::Borrowed(token))
        );
    }

    #[test]
    fn any_other_spelling_is_left_to_the_parser() {
        for text in [
            r#"{"passcode":376423,"token":"t"}"#,
            r#"{"passcode":"3764\u0032\u0033","token":"t"}"#,
            r#"{"passcode":"376423","token":"a\/b"}"#,
            r#"{"pass\u0063ode":"376423","token":"t"}"#,
            r#"{"passcode":"376423","token":"t","x":1}"#,
            r#"{"passcode":"376423"}"#,
            r#"{"passcode":"1","passcode":"2"}"#,
            r#"{"token":"t","token":"t"}"#,
            r#"["376423","t"]"#,
            r#"{"passcode":"376423","token":"t"} x"#,
            r#"{"passcode":"376423","token":"t",}"#,
            "{\"passcode\":\"37\u{1}6423\",\"token\":\"t\"}",
            r#"{"passcode":"376423","token":"t""#,
        ] {
            assert_eq!(plain_body(text), None, "{text}");
        }
    }

    /// The bytes an edit puts in: JSON's punctuation, an escape, a control character and
    /// text, so an edited body is now and then still one the fast read takes.
    const EDITS: [char; 14] = [
        '"', '\\', ' ', '\n', ',', ':', '{', '}', '[', 'a', '1', '\u{1}', 'é', 'p',
    ];

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]

        /// The plain body, either key first, with bytes put in, cut out and changed: the
        /// fast read takes an edited body only where the parser reads it alike.
        #[test]
        fn an_edited_body_is_read_alike_or_left_to_the_parser(
            token_first in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..64, 0usize..EDITS.len(), 0u8..3), 0..4),
        ) {
            let plain = if token_first {
                r#"{"token":"a.b.c","passcode":"376423"}"#
            } else {
                r#"{"passcode":"376423","token":"a.b.c"}"#
            };
            let mut text: Vec<char> = plain.chars().collect();
            for (at, edit, how) in edits {
                let at = at % (text.len() + 1);
                let c = EDITS[edit];
                match how {
                    0 => text.insert(at, c),
                    1 if at < text.len() => {
                        text.remove(at);
                    }
                    _ if at < text.len() => text[at] = c,
                    _ => {}
                }
            }
            let text: String = text.into_iter().collect();
            proptest::prop_assert!(agrees(&text), "{:?}", text);
        }
    }
}
