//! Envelopes: peel a route's configured layers (`form`, `aes`, `token`, `bearer`, `jwt`,
//! `passcode`) off a request to reach the JSON exactly as the sender encoded it, and put them
//! back on.
//!
//! A stack lists layers outermost first, e.g. `[form, aes]` (section 15's encrypted form),
//! `[token, jwt]` (section 11's passcode + JWT), `[bearer, jwt]`, `[token, jwt, aes]` or
//! `[form, aes, jwt]`, or `[form, aes, passcode]` (deployed API-7 pulls: the passcode inside
//! the ciphertext). [`open`] peels outermost → innermost; [`seal`] builds innermost →
//! outermost. The plaintext is never re-serialised: a 17-digit `ticketNo` survives
//! byte-for-byte.
//!
//! Between layers: `form`, `token` and `bearer` read the HTTP request and yield a string;
//! `aes` and `jwt` consume a string. When the thing before them produced JSON (the request
//! body itself, `aes` plaintext, `jwt` claims), they take a JSON string's content, else the
//! `encData` (for `aes`) or `token` (for `jwt`) field of a JSON object, else the bytes
//! trimmed of whitespace. Sealing mirrors this: `aes` output signed by `jwt` becomes the
//! claims `{"encData":"<base64>"}`; a `jwt` encrypted by `aes` is the bare compact token.
//!
//! ```
//! use bsk_sidecar::envelope::{self, aes::AesKey, BodyShape, Incoming, Layer, PeerKeys, Stack};
//!
//! let keys = PeerKeys {
//!     agid: "BSK".into(),
//!     passcode: None,
//!     jwt: None,
//!     aes: vec![AesKey::new(b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", b"V0ZMZO6WZ45KY2PL").unwrap()],
//! };
//! let stack = Stack::new(&[Layer::Form, Layer::Aes]).unwrap();
//! assert!(envelope::validate_stack(&stack, &keys).is_empty());
//! let plain = br#"{"ticketNo":20221202153322882}"#;
//! let sealed = envelope::seal(&stack, &keys, plain, BodyShape::Form).unwrap();
//! let req = Incoming {
//!     content_type: Some(sealed.content_type),
//!     authorization: None,
//!     passcode_header: None,
//!     body: &sealed.body,
//! };
//! let opened = envelope::open(&stack, &keys, &req, 1_700_000_000).unwrap();
//! assert_eq!(opened.plain, plain);
//! assert_eq!(opened.shape, BodyShape::Form);
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::guard::bounds::JsonBounds;
use crate::guard::fields::{BorrowedStr, Ids, Object};
use crate::guard::payload;

use crate::secret::Secret;

pub mod aes;
pub mod bearer;
pub mod form;
pub mod jwt;
pub mod passcode;
pub mod token;

#[cfg(test)]
mod tests;

/// Content type of a sealed body that is a bare base64 ciphertext or compact token.
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// One envelope layer, named in config as in [`Layer::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// `agId` + `encData`, urlencoded or JSON object. Outermost only.
    Form,
    /// AES-256-CBC ciphertext in base64.
    Aes,
    /// `{"passcode": ..., "token": ...}` body. Outermost only, followed by `jwt`.
    Token,
    /// `Authorization: Bearer <JWT>`. Outermost only, followed by `jwt`.
    Bearer,
    /// HMAC-signed compact JWS.
    Jwt,
    /// A `passcode` field of the JSON that `aes` or `jwt` opened. Last, right after one of them.
    Passcode,
}

impl Layer {
    /// Every layer, in declaration order.
    pub const ALL: [Layer; 6] = [
        Layer::Form,
        Layer::Aes,
        Layer::Token,
        Layer::Bearer,
        Layer::Jwt,
        Layer::Passcode,
    ];

    /// The config name: `form`, `aes`, `token`, `bearer`, `jwt`, `passcode`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Form => "form",
            Layer::Aes => "aes",
            Layer::Token => "token",
            Layer::Bearer => "bearer",
            Layer::Jwt => "jwt",
            Layer::Passcode => "passcode",
        }
    }

    /// The layer with config name `s` (exact, lowercase).
    pub fn parse(s: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|layer| layer.name() == s)
    }

    /// Layers that read the HTTP request itself rather than what an outer layer produced.
    fn reads_request(self) -> bool {
        matches!(self, Layer::Form | Layer::Token | Layer::Bearer)
    }

    /// `passcode` reads the JSON that `aes` or `jwt` opened, so it must be the last layer
    /// and come right after one of them: is it out of place at index `i` of `layers`?
    fn misplaced_passcode(layers: &[Layer], i: usize) -> bool {
        let after_json = i
            .checked_sub(1)
            .and_then(|before| layers.get(before))
            .is_some_and(|before| matches!(before, Layer::Aes | Layer::Jwt));
        !after_json || i + 1 != layers.len()
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything one peer's envelopes need. `Debug` shows no secret.
#[derive(Clone, Debug)]
pub struct PeerKeys {
    /// The `agId` this peer puts in form bodies (exact, case-sensitive); also written by seal.
    pub agid: String,
    /// Passcode for the `token` and `passcode` layers (required there) and `bearer` (optional).
    pub passcode: Option<Secret>,
    /// Key for the `jwt` layer.
    pub jwt: Option<jwt::JwtKey>,
    /// AES keys, current first: seal uses the first, open tries each in order (rotation).
    pub aes: Vec<aes::AesKey>,
}

/// A layer list in an order that can be opened: non-empty; `form`/`token`/`bearer` only
/// outermost; `token`/`bearer` followed by `jwt`; `passcode` last, right after `aes` or
/// `jwt`; no layer twice. Made only by [`Stack::new`], so [`open`] never meets a bad order.
/// Reads as the `[Layer]` slice, outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack(Vec<Layer>);

impl Stack {
    /// The stack, or every rule `layers` breaks, in words.
    pub fn new(layers: &[Layer]) -> Result<Stack, Vec<String>> {
        let problems = order_problems(layers);
        if problems.is_empty() {
            Ok(Stack(layers.to_vec()))
        } else {
            Err(problems)
        }
    }
}

impl std::ops::Deref for Stack {
    type Target = [Layer];

    fn deref(&self) -> &[Layer] {
        &self.0
    }
}

/// Checks a layer stack against the keys it will use: the order rules of [`Stack`], and
/// each layer's keys present. Returns every problem in words (empty = usable).
pub fn validate_stack(layers: &[Layer], keys: &PeerKeys) -> Vec<String> {
    let mut problems = order_problems(layers);
    if layers.is_empty() {
        return problems;
    }
    problems.extend(key_problems(layers, keys));
    problems
}

/// The order rules of [`Stack`] that `layers` breaks.
fn order_problems(layers: &[Layer]) -> Vec<String> {
    let mut problems = Vec::new();
    if layers.is_empty() {
        problems.push(
            "the layer list is empty; give at least one of form, aes, token, bearer, jwt, passcode"
                .to_owned(),
        );
        return problems;
    }
    for (i, &layer) in layers.iter().enumerate() {
        if layers.iter().take(i).any(|&earlier| earlier == layer) {
            problems.push(format!("`{layer}` appears more than once"));
            continue;
        }
        if layer.reads_request() && i > 0 {
            problems.push(format!(
                "`{layer}` reads the HTTP request itself, so it must be the first (outermost) layer, not number {}",
                i + 1
            ));
        }
        if matches!(layer, Layer::Token | Layer::Bearer) && layers.get(i + 1) != Some(&Layer::Jwt) {
            problems.push(format!(
                "`{layer}` carries a JWT, so `jwt` must come right after it"
            ));
        }
        if layer == Layer::Passcode && Layer::misplaced_passcode(layers, i) {
            problems.push(
                "`passcode` checks a field of the JSON that `aes` or `jwt` opens, so it must come right after one of them, as the last layer"
                    .to_owned(),
            );
        }
    }
    problems
}

/// The keys `layers` need that `keys` lacks.
fn key_problems(layers: &[Layer], keys: &PeerKeys) -> Vec<String> {
    let mut problems = Vec::new();
    if layers.contains(&Layer::Form) && keys.agid.is_empty() {
        problems.push("`form` needs the peer's agid".to_owned());
    }
    if layers.contains(&Layer::Aes) && keys.aes.is_empty() {
        problems.push("`aes` needs at least one AES key".to_owned());
    }
    if let Some(layer) = layers
        .iter()
        .find(|l| matches!(l, Layer::Token | Layer::Passcode))
    {
        match &keys.passcode {
            None => problems.push(format!("`{layer}` needs the peer's passcode")),
            Some(p) if p.is_empty() => problems.push("the passcode is empty".to_owned()),
            Some(_) => {}
        }
    }
    if layers.contains(&Layer::Jwt) {
        match &keys.jwt {
            None => problems.push("`jwt` needs the peer's JWT key".to_owned()),
            Some(key) => problems.extend(key.problems()),
        }
    }
    problems
}

/// [`Stack`]'s order rules for a stack given as a slice (sealing takes any part of a
/// route's stack, e.g. the layers inside `bearer`), so a bad stack fails closed.
fn check_order(layers: &[Layer]) -> Result<(), Failure> {
    if order_problems(layers).is_empty() {
        Ok(())
    } else {
        Err(Failure::Misconfigured("layer stack"))
    }
}

/// Encoding of the outermost body, so a response can be sealed the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyShape {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// A JSON object (also reported for every stack not starting with `form`).
    Json,
}

/// The parts of a request that envelopes read. `Debug` hides credentials and the body.
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// The `X-Passcode` header.
    pub passcode_header: Option<&'a str>,
    pub body: &'a [u8],
}

impl fmt::Debug for Incoming<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("content_type", &self.content_type)
            .field("authorization", &self.authorization.map(|_| "***"))
            .field("passcode_header", &self.passcode_header.map(|_| "***"))
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// A verified token's signature segment, held in place: base64url of an HMAC tag, 43, 64
/// or 86 characters (HS256, HS384, HS512).
pub type Signature = crate::guard::fields::ShortText<86>;

/// A successfully opened request. `Debug` shows the plaintext's length, not its content.
pub struct Opened {
    /// The innermost JSON, byte-for-byte as the sender encoded it.
    pub plain: Vec<u8>,
    pub shape: BodyShape,
    /// `iat` of the JWT layer, if any, for the replay guard.
    pub jwt_iat: Option<i64>,
    /// `jti` of the JWT layer, if any, for the replay guard.
    pub jwt_jti: Option<String>,
    /// `exp` of the JWT layer, if any: the token's lifetime and how long a replay record of
    /// it is kept.
    pub jwt_exp: Option<i64>,
    /// The JWT's signature segment, if any: a token without `jti` is used once by this.
    pub jwt_signature: Option<Signature>,
    /// The payload ids of `plain`, read from the entries its validation kept (`plain` is
    /// not parsed again for them).
    pub ids: Ids,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("plain", &format_args!("<{} bytes>", self.plain.len()))
            .field("shape", &self.shape)
            .field("jwt_iat", &self.jwt_iat)
            .field("jwt_jti", &self.jwt_jti)
            .finish_non_exhaustive()
    }
}

/// A sealed message, ready to send. `Debug` hides the body and the credentials.
pub struct Sealed {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// `Bearer <jwt>` for a `bearer` stack.
    pub authorization: Option<String>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("content_type", &self.content_type)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What one layer hands to the next.
enum Carried<'a> {
    /// Bytes that may be JSON: the request body, `aes` plaintext, `jwt` claims.
    Bytes(Cow<'a, [u8]>),
    /// A string a layer pulled out or produced: `encData`, a token, a base64 ciphertext.
    Text(Cow<'a, str>),
}

/// The field of a JSON object that carries what `aes` or `jwt` consumes.
#[derive(Clone, Copy)]
enum Field {
    EncData,
    Token,
}

impl Carried<'_> {
    /// The string the next `aes` (`Field::EncData`) or `jwt` (`Field::Token`) layer consumes;
    /// `None` when the bytes are not UTF-8.
    fn string_for(&self, field: Field) -> Option<Cow<'_, str>> {
        match self {
            Carried::Text(text) => Some(Cow::Borrowed(text.as_ref())),
            Carried::Bytes(bytes) => string_in(bytes, field),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Carried::Bytes(bytes) => bytes,
            Carried::Text(text) => text.as_bytes(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            Carried::Bytes(bytes) => bytes.into_owned(),
            Carried::Text(text) => text.into_owned().into_bytes(),
        }
    }
}

/// The chaining rule: a JSON string's content, else the field of a JSON object, else the
/// bytes trimmed of whitespace.
fn string_in(bytes: &[u8], field: Field) -> Option<Cow<'_, str>> {
    // Borrowed from `bytes` unless the value has escapes: the base64 of a whole body
    // is not copied on its way to the decoder.
    #[derive(Deserialize)]
    struct EncData<'a> {
        #[serde(rename = "encData", borrow)]
        value: Option<BorrowedStr<'a>>,
    }
    #[derive(Deserialize)]
    struct Token<'a> {
        #[serde(rename = "token", borrow)]
        value: Option<BorrowedStr<'a>>,
    }

    let trimmed = bytes.trim_ascii();
    let found = match (trimmed.first(), field) {
        (Some(b'"'), _) => serde_json::from_slice::<BorrowedStr<'_>>(trimmed)
            .ok()
            .map(|v| v.0),
        (Some(b'{'), Field::EncData) => serde_json::from_slice::<EncData<'_>>(trimmed)
            .ok()
            .and_then(|o| o.value)
            .map(|v| v.0),
        (Some(b'{'), Field::Token) => serde_json::from_slice::<Token<'_>>(trimmed)
            .ok()
            .and_then(|o| o.value)
            .map(|v| v.0),
        _ => None,
    };
    match found {
        Some(found) => Some(found),
        None => std::str::from_utf8(trimmed).ok().map(Cow::Borrowed),
    }
}

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

/// What an `aes` layer followed by `jwt` must decrypt to: something carrying a compact token.
fn carries_token(plain: &[u8]) -> bool {
    string_in(plain, Field::Token).is_some_and(|t| jwt::is_compact_shape(t.trim()))
}

/// Peels `layers` (outermost first) off `req` for the peer `keys` at time `now_unix` and
/// returns the innermost JSON exactly as sent: any well-formed JSON value
/// ([`payload::validate_any`]), as the `open` tool and a peer's reply need. Ingress uses
/// [`open_checked`].
pub fn open(
    layers: &Stack,
    keys: &PeerKeys,
    req: &Incoming<'_>,
    now_unix: u64,
) -> Result<Opened, Failure> {
    open_with(layers, keys, req, now_unix, None)
}

/// [`open`], with every JSON a layer hands on — AES plaintext, JWT claims, a lone form's
/// `encData` — passed through [`payload::validate`] under `bounds`: one object or array,
/// no repeated key, numbers in range, bounded. A refusal of what `aes` produced is
/// [`Failure::Undecryptable`] like every other AES failure (CBC is malleable: anything
/// else would be an oracle); of signed claims, [`Failure::InvalidPayload`].
pub fn open_checked(
    layers: &Stack,
    keys: &PeerKeys,
    req: &Incoming<'_>,
    now_unix: u64,
    bounds: &JsonBounds,
) -> Result<Opened, Failure> {
    open_with(layers, keys, req, now_unix, Some(bounds))
}

fn open_with(
    layers: &Stack,
    keys: &PeerKeys,
    req: &Incoming<'_>,
    now_unix: u64,
    bounds: Option<&JsonBounds>,
) -> Result<Opened, Failure> {
    // The innermost JSON (what `aes` opens, unless a `jwt` is inside it; a lone `form`'s
    // `encData`) is validated with its entries kept, and its ids read from them.
    let ids = std::cell::Cell::new(None);
    let innermost = |p: &[u8]| {
        let mut object = Object::default();
        // Not an object: no entries, so no ids.
        let valid = payload::read_into(p, bounds, &mut object).is_ok();
        if valid {
            ids.set(Some(Ids::of(&object)));
        }
        valid
    };
    let mut carried = Carried::Bytes(Cow::Borrowed(req.body));
    let mut shape = BodyShape::Json;
    let mut jwt_iat = None;
    let mut jwt_jti = None;
    let mut jwt_exp = None;
    let mut jwt_signature = None;
    // A `jwt` layer's `encData` claim, read beside the time claims, for the layer right
    // after it (the claims are then not parsed again to find it).
    let mut claims_enc_data = None;
    for (i, &layer) in layers.iter().enumerate() {
        let enc_data_read = claims_enc_data.take();
        carried = match layer {
            Layer::Form => {
                let (enc_data, body_shape) = form::open(&keys.agid, req.content_type, req.body)?;
                shape = body_shape;
                Carried::Text(Cow::Owned(enc_data))
            }
            Layer::Token => Carried::Text(token::open(keys.passcode.as_ref(), req.body)?),
            Layer::Bearer => Carried::Text(Cow::Owned(bearer::open(
                keys.passcode.as_ref(),
                req.authorization,
                req.passcode_header,
                req.body,
            )?)),
            Layer::Aes => {
                if keys.aes.is_empty() {
                    return Err(Failure::Misconfigured("aes keys"));
                }
                let b64 = match enc_data_read {
                    Some(read) => Cow::Owned(read),
                    None => carried
                        .string_for(Field::EncData)
                        .ok_or(Failure::Undecryptable(Undecryptable::BadBase64))?,
                };
                let plain = if layers.get(i + 1) == Some(&Layer::Jwt) {
                    aes::decrypt(&keys.aes, &b64, carries_token)
                } else {
                    aes::decrypt(&keys.aes, &b64, innermost)
                };
                Carried::Bytes(Cow::Owned(
                    plain.map_err(|e| Failure::Undecryptable(e.into()))?,
                ))
            }
            Layer::Jwt => {
                let key = keys.jwt.as_ref().ok_or(Failure::Misconfigured("jwt key"))?;
                let token = carried
                    .string_for(Field::Token)
                    .ok_or(Failure::MalformedToken)?;
                let token = token.trim();
                let verified = jwt::verify_validated(key, token, now_unix, bounds)?;
                jwt_iat = verified.iat;
                jwt_jti = verified.jti;
                jwt_exp = verified.exp;
                // Verified: three segments, so the signature is what follows the last dot,
                // found from the end (a vectorised search, where `rsplit_once` went
                // through the generic pattern search byte by byte).
                jwt_signature = memchr::memrchr(b'.', token.as_bytes())
                    .and_then(|dot| token.as_bytes().get(dot + 1..))
                    .and_then(Signature::new);
                claims_enc_data = verified.enc_data;
                ids.set(Some(verified.ids));
                Carried::Bytes(Cow::Owned(verified.payload))
            }
            Layer::Passcode => {
                passcode::open(keys.passcode.as_ref(), carried.as_bytes())?;
                carried
            }
        };
    }
    let plain = carried.into_bytes();
    // `aes` and `jwt` already validated what they produced; a lone `form` has not.
    if layers.last() == Some(&Layer::Form) && !innermost(&plain) {
        return Err(Failure::Undecryptable(Undecryptable::NotJson));
    }
    Ok(Opened {
        plain,
        shape,
        jwt_iat,
        jwt_jti,
        jwt_exp,
        jwt_signature,
        ids: ids.take().unwrap_or_default(),
    })
}

/// Seals the JSON `plain` for the peer `keys` in `layers` (outermost first). `shape` picks the
/// `form` layer's encoding and matters for nothing else. `token` yields
/// `{"passcode":…,"token":…}`; `bearer` yields `Authorization: Bearer <jwt>` with a body of
/// `{"passcode":…}` when the peer has a passcode, else empty; a stack starting with `aes` or
/// `jwt` yields the bare base64 or token as `text/plain`.
pub fn seal(
    layers: &[Layer],
    keys: &PeerKeys,
    plain: &[u8],
    shape: BodyShape,
) -> Result<Sealed, Failure> {
    seal_timed(layers, keys, plain, shape, None)
}

/// [`seal`], with `iat` and `exp` (Unix seconds) added to the claims a `jwt` layer signs
/// when `times` is given (the claims' other bytes are kept as they are; claims that
/// already carry `iat` or `exp` keep theirs). For peers that require `exp`.
pub fn seal_timed(
    layers: &[Layer],
    keys: &PeerKeys,
    plain: &[u8],
    shape: BodyShape,
    times: Option<(u64, u64)>,
) -> Result<Sealed, Failure> {
    check_order(layers)?;
    if !is_json(plain) {
        return Err(Failure::Undecryptable(Undecryptable::NotJson));
    }
    let Some((&outer, inner)) = layers.split_first() else {
        return Err(Failure::Misconfigured("layer stack"));
    };
    let mut made = Carried::Bytes(Cow::Borrowed(plain));
    for &layer in inner.iter().rev() {
        made = seal_one(layer, keys, made, times)?;
    }
    let text = |made: &Carried<'_>| -> Result<String, Failure> {
        match made {
            Carried::Text(text) => Ok(text.clone().into_owned()),
            Carried::Bytes(bytes) => std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| Failure::Undecryptable(Undecryptable::NotUtf8)),
        }
    };
    match outer {
        Layer::Form => {
            let (body, content_type) = form::seal(&keys.agid, &text(&made)?, shape);
            Ok(Sealed {
                body,
                content_type,
                authorization: None,
            })
        }
        Layer::Token => {
            let passcode = keys
                .passcode
                .as_ref()
                .ok_or(Failure::Misconfigured("passcode"))?;
            let body = token::seal(passcode, &text(&made)?)?;
            Ok(Sealed {
                body,
                content_type: form::JSON_CONTENT_TYPE,
                authorization: None,
            })
        }
        Layer::Bearer => {
            let (body, authorization) = bearer::seal(keys.passcode.as_ref(), &text(&made)?)?;
            Ok(Sealed {
                body,
                content_type: form::JSON_CONTENT_TYPE,
                authorization: Some(authorization),
            })
        }
        Layer::Aes | Layer::Jwt | Layer::Passcode => {
            let body = seal_one(outer, keys, made, times)?.into_bytes();
            Ok(Sealed {
                body,
                content_type: TEXT_CONTENT_TYPE,
                authorization: None,
            })
        }
    }
}

/// Applies one `aes` or `jwt` layer while sealing.
fn seal_one<'a>(
    layer: Layer,
    keys: &PeerKeys,
    made: Carried<'a>,
    times: Option<(u64, u64)>,
) -> Result<Carried<'a>, Failure> {
    match layer {
        Layer::Aes => {
            let key = keys.aes.first().ok_or(Failure::Misconfigured("aes keys"))?;
            let bytes: &[u8] = match &made {
                Carried::Bytes(bytes) => bytes,
                Carried::Text(text) => text.as_bytes(),
            };
            Ok(Carried::Text(Cow::Owned(aes::encrypt(key, bytes))))
        }
        Layer::Jwt => {
            let key = keys.jwt.as_ref().ok_or(Failure::Misconfigured("jwt key"))?;
            let token = match &made {
                Carried::Bytes(claims) => match times {
                    Some((iat, exp)) => jwt::sign(key, &jwt::with_times(claims, iat, exp)?)?,
                    None => jwt::sign(key, claims)?,
                },
                Carried::Text(enc_data) => {
                    #[derive(serde::Serialize)]
                    struct Claims<'s> {
                        #[serde(rename = "encData")]
                        enc_data: &'s str,
                    }
                    let claims = serde_json::to_vec(&Claims { enc_data })
                        .map_err(|_| Failure::BadToken(TokenProblem::MalformedClaims))?;
                    match times {
                        Some((iat, exp)) => jwt::sign(key, &jwt::with_times(&claims, iat, exp)?)?,
                        None => jwt::sign(key, &claims)?,
                    }
                }
            };
            Ok(Carried::Text(Cow::Owned(token)))
        }
        // The answer does not carry the passcode back; JSON sealed for a peer that expects
        // one (egress) carries its own `passcode` field.
        Layer::Passcode => Ok(made),
        // `check_order` keeps request-reading layers outermost, where `seal` handles them.
        Layer::Form | Layer::Token | Layer::Bearer => Err(Failure::Misconfigured("layer stack")),
    }
}

/// Why opening failed. Callers map the variant to a response; [`Failure::reason`] is the
/// bounded label for metrics and logs. The `Display` text may carry detail for logs and must
/// not be sent to callers (it would make the padding oracle visible).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Anything wrong inside `form`/`aes` (and non-JSON innermost plaintext): callers must see
    /// one identical response for all of these.
    #[error("envelope could not be opened: {0}")]
    Undecryptable(Undecryptable),
    /// The form's `agId` is not this peer's.
    #[error("agId does not name this peer")]
    WrongAgid,
    /// The passcode was missing or wrong.
    #[error("passcode rejected")]
    BadPasscode,
    /// No token where one was expected, or not a well-formed compact JWS.
    #[error("token missing or malformed")]
    MalformedToken,
    /// A well-formed token failed a check.
    #[error("token rejected: {0}")]
    BadToken(TokenProblem),
    /// Correctly signed claims that are not one well-formed JSON object or array (see
    /// [`payload::validate`]).
    #[error("signed payload refused: {0}")]
    InvalidPayload(payload::Invalid),
    /// The route uses a layer whose key this peer lacks, or the stack itself is invalid.
    #[error("layer not configured for this peer: {0}")]
    Misconfigured(&'static str),
}

impl Failure {
    /// Short snake_case label for metrics and logs (bounded set).
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Undecryptable(detail) => detail.reason(),
            Failure::WrongAgid => "wrong_agid",
            Failure::BadPasscode => "bad_passcode",
            Failure::MalformedToken => "malformed_token",
            Failure::BadToken(problem) => problem.reason(),
            Failure::InvalidPayload(invalid) => invalid.reason(),
            Failure::Misconfigured(_) => "misconfigured",
        }
    }
}

/// Detail of [`Failure::Undecryptable`], for logs and metrics only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undecryptable {
    /// The form body lacks `agId`/`encData`, repeats one, or is not a form or JSON object.
    #[error("malformed form body")]
    MalformedForm,
    /// The ciphertext is not base64.
    #[error("not base64")]
    BadBase64,
    /// The ciphertext is empty or not a whole number of blocks.
    #[error("bad ciphertext length")]
    BadLength,
    /// No key gave valid PKCS#7 padding.
    #[error("bad padding")]
    BadPadding,
    /// The plaintext is not UTF-8.
    #[error("plaintext not UTF-8")]
    NotUtf8,
    /// The plaintext is not what comes next: JSON when it is the innermost layer's output,
    /// a compact token when a `jwt` layer follows `aes`.
    #[error("plaintext not JSON")]
    NotJson,
}

impl Undecryptable {
    /// Short snake_case label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Undecryptable::MalformedForm => "malformed_form",
            Undecryptable::BadBase64 => "bad_base64",
            Undecryptable::BadLength => "bad_length",
            Undecryptable::BadPadding => "bad_padding",
            Undecryptable::NotUtf8 => "not_utf8",
            Undecryptable::NotJson => "not_json",
        }
    }
}

impl From<aes::AesFailure> for Undecryptable {
    fn from(failure: aes::AesFailure) -> Self {
        match failure {
            aes::AesFailure::BadBase64 => Undecryptable::BadBase64,
            aes::AesFailure::BadLength => Undecryptable::BadLength,
            aes::AesFailure::BadPadding => Undecryptable::BadPadding,
            aes::AesFailure::NotUtf8 => Undecryptable::NotUtf8,
            aes::AesFailure::NotAccepted => Undecryptable::NotJson,
        }
    }
}

/// Detail of [`Failure::BadToken`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
    /// The header's `alg` is `none`, unknown, or not configured for this peer.
    #[error("algorithm not allowed")]
    AlgNotAllowed,
    /// `exp` (plus leeway) has passed.
    #[error("expired")]
    Expired,
    /// `nbf` (minus leeway) is still in the future.
    #[error("not yet valid")]
    NotYetValid,
    /// `iat` is in the future beyond the leeway.
    #[error("issued in the future")]
    IssuedInFuture,
    /// The peer requires `exp` and the token has none.
    #[error("missing exp")]
    MissingExp,
    /// The payload is not JSON, or a time claim is not an integer in range, or `jti` not a
    /// string.
    #[error("malformed claims")]
    MalformedClaims,
    /// `exp` lies further ahead than the peer's `jwt.max_lifetime`.
    #[error("lifetime longer than allowed")]
    LifetimeTooLong,
}

impl TokenProblem {
    /// Short snake_case label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            TokenProblem::BadSignature => "bad_signature",
            TokenProblem::AlgNotAllowed => "alg_not_allowed",
            TokenProblem::Expired => "expired",
            TokenProblem::NotYetValid => "not_yet_valid",
            TokenProblem::IssuedInFuture => "issued_in_future",
            TokenProblem::MissingExp => "missing_exp",
            TokenProblem::MalformedClaims => "malformed_claims",
            TokenProblem::LifetimeTooLong => "lifetime_too_long",
        }
    }
}
