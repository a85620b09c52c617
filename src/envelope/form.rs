//! `form` layer: the outermost body naming the sender (`agId`) and carrying the sealed
//! payload (`encData`), either `application/x-www-form-urlencoded` (section 15's "POST
//! REQUEST", also a browser form POST) or the same two fields as a JSON object.
//!
//! A `+` in `encData` sent without percent-encoding arrives here as a space; the `aes` layer
//! turns it back, so nothing is repaired here.
//!
//! ```
//! use bsk_sidecar::envelope::{form, BodyShape};
//!
//! let (enc_data, shape) = form::open("BSK", None, b"agId=BSK&encData=m4p3%2BCxx").unwrap();
//! assert_eq!((enc_data.as_str(), shape), ("m4p3+Cxx", BodyShape::Form));
//! ```

use serde::{Deserialize, Serialize};

use super::{BodyShape, Failure, Undecryptable};

const AGID: &str = "agId";
const ENC_DATA: &str = "encData";

/// Content type of a urlencoded form body.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";
/// Content type of a JSON body.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Which encoding a body uses: JSON when the content type says JSON (`application/json` or
/// `…+json`), or when there is no content type and the body starts with `{`; otherwise a
/// urlencoded form.
pub fn shape_of(content_type: Option<&str>, body: &[u8]) -> BodyShape {
    match content_type {
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            let json = essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE)
                || (essence.len() > 5
                    && essence
                        .get(essence.len() - 5..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case("+json")));
            if json {
                BodyShape::Json
            } else {
                BodyShape::Form
            }
        }
        None if body.trim_ascii_start().starts_with(b"{") => BodyShape::Json,
        None => BodyShape::Form,
    }
}

/// Reads `agId` and `encData` (each exactly once; other fields are ignored), checks that
/// `agId` is `expected_agid` exactly, and returns `encData` with the body's shape.
pub fn open(
    expected_agid: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(String, BodyShape), Failure> {
    let shape = shape_of(content_type, body);
    let (agid, enc_data) = match shape {
        BodyShape::Form => read_urlencoded(body),
        BodyShape::Json => read_json(body),
    }
    .ok_or(Failure::Undecryptable(Undecryptable::MalformedForm))?;
    if agid != expected_agid {
        return Err(Failure::WrongAgid);
    }
    Ok((enc_data, shape))
}

/// Builds the body carrying `enc_data` from `agid`, and its content type.
pub fn seal(agid: &str, enc_data: &str, shape: BodyShape) -> (Vec<u8>, &'static str) {
    match shape {
        BodyShape::Form => {
            let mut body = Vec::with_capacity(agid.len() + enc_data.len() * 11 / 10 + 32);
            body.extend_from_slice(AGID.as_bytes());
            body.push(b'=');
            push_urlencoded(&mut body, agid);
            body.push(b'&');
            body.extend_from_slice(ENC_DATA.as_bytes());
            body.push(b'=');
            push_urlencoded(&mut body, enc_data);
            (body, FORM_CONTENT_TYPE)
        }
        BodyShape::Json => {
            #[derive(Serialize)]
            struct Fields<'a> {
                #[serde(rename = "agId")]
                agid: &'a str,
                #[serde(rename = "encData")]
                enc_data: &'a str,
            }
            // Serialising two strings cannot fail; the fallback keeps this function total.
            let body = serde_json::to_vec(&Fields { agid, enc_data }).unwrap_or_default();
            (body, JSON_CONTENT_TYPE)
        }
    }
}

/// The `application/x-www-form-urlencoded` byte serializer (WHATWG URL standard), which
/// percent-encodes base64's `+`, `/` and `=` as a correct sender must. Hand-written because
/// `form_urlencoded::Serializer` is about ten times slower on megabyte documents.
fn push_urlencoded(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let is_plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_');
    let mut rest = value.as_bytes();
    while !rest.is_empty() {
        let run = rest
            .iter()
            .position(|&b| !is_plain(b))
            .unwrap_or(rest.len());
        let (plain, special) = rest.split_at(run);
        out.extend_from_slice(plain);
        let Some((&b, tail)) = special.split_first() else {
            break;
        };
        if b == b' ' {
            out.push(b'+');
        } else {
            let hex = |nibble: u8| HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
            out.extend_from_slice(&[b'%', hex(b >> 4), hex(b & 15)]);
        }
        rest = tail;
    }
}

fn read_urlencoded(body: &[u8]) -> Option<(String, String)> {
    let mut agid = None;
    let mut enc_data = None;
    for (name, value) in form_urlencoded::parse(body) {
        let slot = match name.as_ref() {
            AGID => &mut agid,
            ENC_DATA => &mut enc_data,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return None;
        }
    }
    Some((agid?, enc_data?))
}

fn read_json(body: &[u8]) -> Option<(String, String)> {
    // Derived `Deserialize` refuses a duplicated field, which is what we want here.
    #[derive(Deserialize)]
    struct Fields {
        #[serde(rename = "agId")]
        agid: String,
        #[serde(rename = "encData")]
        enc_data: String,
    }
    let fields: Fields = serde_json::from_slice(body).ok()?;
    Some((fields.agid, fields.enc_data))
}
