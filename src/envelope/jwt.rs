//! `jwt` layer: compact JWS with an HMAC algorithm (HS256 by default), verified with
//! `jsonwebtoken`'s header parser and the HMAC it uses (RustCrypto's `hmac`), with the time
//! claims checked against an injected clock so tests can pin it.
//!
//! The payload handed on is the base64url-decoded middle segment exactly as the sender wrote
//! it, never a re-serialisation of the claims (a 17-digit `ticketNo` survives byte-for-byte).
//!
//! ```
//! use bsk_sidecar::envelope::jwt::{self, JwtKey};
//! use bsk_sidecar::secret::Secret;
//!
//! let mut key = JwtKey::new(Secret::new("a shared secret of at least 32 bytes"));
//! key.require_exp = false;
//! let token = jwt::sign(&key, br#"{"ticketNo":20221202153322882}"#).unwrap();
//! let verified = jwt::verify(&key, &token, 1_700_000_000).unwrap();
//! assert_eq!(verified.payload, br#"{"ticketNo":20221202153322882}"#);
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use serde::de::IgnoredAny;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{Failure, TokenProblem};
use crate::guard::bounds::JsonBounds;
use crate::guard::fields::{self, Ids, Object, Raw};
use crate::guard::payload::{self, Invalid};
use crate::secret::Secret;

/// One peer's JWT settings. `Debug` shows the secret as `***`.
#[derive(Clone, Debug)]
pub struct JwtKey {
    /// The shared HMAC secret; its bytes are used as they are (the ASCII of the secret string).
    pub secret: Secret,
    /// Algorithms accepted on verify; the first one is used to sign. Only HS256/HS384/HS512.
    pub algorithms: Vec<Algorithm>,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

impl JwtKey {
    /// The secure defaults: HS256 only, `exp` required, 60 s leeway.
    pub fn new(secret: Secret) -> JwtKey {
        JwtKey {
            secret,
            algorithms: vec![Algorithm::HS256],
            require_exp: true,
            leeway_secs: 60,
        }
    }

    /// What is wrong with this key, in words for a config error (empty = usable).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.secret.is_empty() {
            problems.push("the JWT secret is empty".to_owned());
        }
        if self.algorithms.is_empty() {
            problems.push("no JWT algorithm is allowed; use HS256".to_owned());
        }
        for alg in &self.algorithms {
            if alg.family() != AlgorithmFamily::Hmac {
                problems.push(format!(
                    "JWT algorithm {alg:?} is not supported; only HS256, HS384 and HS512 are"
                ));
            }
        }
        problems
    }
}

/// A token that passed signature, algorithm and time checks.
#[derive(Clone)]
pub struct Verified {
    /// The decoded payload bytes exactly as signed.
    pub payload: Vec<u8>,
    /// `iat`, for the replay guard.
    pub iat: Option<i64>,
    /// `jti`, for the replay guard.
    pub jti: Option<String>,
    /// `exp`, for the lifetime check and how long a replay record is kept.
    pub exp: Option<i64>,
    /// The claims' `encData` when it is a string, read with the time claims: an `aes`
    /// layer inside takes it from here instead of parsing the claims again.
    pub enc_data: Option<String>,
    /// The payload ids the claims carry, read from the same entries: when the claims are
    /// the payload (no `aes` inside), these are the request's.
    pub ids: Ids,
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("payload", &format_args!("<{} bytes>", self.payload.len()))
            .field("iat", &self.iat)
            .field("jti", &self.jti)
            .finish_non_exhaustive()
    }
}

/// Signs `payload_json` (kept byte-for-byte) with the first configured algorithm under the
/// header `{"alg":"HS256","typ":"JWT"}`.
pub fn sign(key: &JwtKey, payload_json: &[u8]) -> Result<String, Failure> {
    let (alg, alg_name) = match key.algorithms.first() {
        Some(Algorithm::HS256) => (Algorithm::HS256, "HS256"),
        Some(Algorithm::HS384) => (Algorithm::HS384, "HS384"),
        Some(Algorithm::HS512) => (Algorithm::HS512, "HS512"),
        _ => return Err(Failure::Misconfigured("jwt algorithm")),
    };
    if key.secret.is_empty() {
        return Err(Failure::Misconfigured("jwt secret"));
    }
    if serde_json::from_slice::<IgnoredAny>(payload_json).is_err() {
        return Err(Failure::BadToken(TokenProblem::MalformedClaims));
    }
    // The signing secret's `kid`, when it has one, tells a peer holding several which.
    let header = match key.secret.kid() {
        Some(kid) => {
            let kid = serde_json::to_string(kid).map_err(|_| Failure::Misconfigured("jwt kid"))?;
            format!(r#"{{"alg":"{alg_name}","typ":"JWT","kid":{kid}}}"#)
        }
        None => format!(r#"{{"alg":"{alg_name}","typ":"JWT"}}"#),
    };
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload_json, &mut token);
    let signature = jsonwebtoken::crypto::sign(
        token.as_bytes(),
        &EncodingKey::from_secret(key.secret.expose()),
        alg,
    )
    .map_err(|_| Failure::Misconfigured("jwt secret"))?;
    token.push('.');
    token.push_str(&signature);
    Ok(token)
}

/// The claims object `claims` with `"iat":iat,"exp":exp` appended before its closing
/// brace — spliced as text so every other byte (a 17-digit `ticketNo`) stays as written.
/// A claim already present is kept, never duplicated. A payload that is not a JSON object
/// (an API-7 answer is an array) cannot carry claims and is returned unchanged.
pub fn with_times(claims: &[u8], iat: u64, exp: u64) -> Result<Vec<u8>, Failure> {
    #[derive(Deserialize)]
    struct Present {
        iat: Option<IgnoredAny>,
        exp: Option<IgnoredAny>,
    }
    let malformed = Failure::BadToken(TokenProblem::MalformedClaims);
    let trimmed = claims.trim_ascii();
    if trimmed.first() != Some(&b'{') {
        return if serde_json::from_slice::<IgnoredAny>(trimmed).is_ok() {
            Ok(claims.to_vec())
        } else {
            Err(malformed)
        };
    }
    let present: Present = serde_json::from_slice(trimmed).map_err(|_| malformed)?;
    let (Some(b'{'), Some((b'}', body))) = (trimmed.first(), trimmed.split_last()) else {
        return Err(malformed);
    };
    let mut add = String::new();
    if present.iat.is_none() {
        add.push_str(&format!(r#""iat":{iat}"#));
    }
    if present.exp.is_none() {
        if !add.is_empty() {
            add.push(',');
        }
        add.push_str(&format!(r#""exp":{exp}"#));
    }
    let mut out = body.to_vec();
    if !add.is_empty() {
        // `{` alone (after trailing whitespace) means the object was empty.
        if body.trim_ascii() != b"{" {
            out.push(b',');
        }
        out.extend_from_slice(add.as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// Verifies `token` at time `now_unix` and returns its payload and replay claims.
///
/// Order: shape, header, algorithm (never `none`, only configured HMAC ones), signature,
/// then payload decoding and the time claims `exp`/`nbf`/`iat` (numbers, with leeway).
pub fn verify(key: &JwtKey, token: &str, now_unix: u64) -> Result<Verified, Failure> {
    verify_validated(key, token, now_unix, None)
}

/// [`verify`], with the signed payload validated before any claim is read from it (what
/// the claims say must be what the application will read): under `bounds` with
/// [`payload::validate`], else [`payload::validate_any`].
pub fn verify_validated(
    key: &JwtKey,
    token: &str,
    now_unix: u64,
    bounds: Option<&JsonBounds>,
) -> Result<Verified, Failure> {
    let payload = verify_signature(key, token)?;
    // RFC 7519 §4: claim names must be unique, and the claims set one JSON object: a
    // token that breaks that is malformed. Only the ingress bounds are reported as such.
    // The time claims are read from the entries the check kept, not parsed again.
    // Scoped: the entries borrow the payload, which is handed on below.
    let (ids, claims) = {
        let mut object = Object::default();
        let is_object = payload::read_into(&payload, bounds, &mut object).map_err(|e| match e {
            Invalid::TooComplex(_) => Failure::InvalidPayload(e),
            _ => Failure::BadToken(TokenProblem::MalformedClaims),
        })?;
        let object = is_object.then_some(&object);
        (
            object.map_or_else(Ids::default, Ids::of),
            TimeClaims::read(object)?,
        )
    };
    claims.check(key, now_unix)?;
    Ok(Verified {
        payload,
        iat: claims.iat,
        jti: claims.jti,
        exp: claims.exp,
        enc_data: claims.enc_data,
        ids,
    })
}

/// The signature half of [`verify`]: returns the decoded payload of a correctly signed
/// token without looking inside it.
pub(crate) fn verify_signature(key: &JwtKey, token: &str) -> Result<Vec<u8>, Failure> {
    if key.secret.is_empty() {
        return Err(Failure::Misconfigured("jwt secret"));
    }
    let (header_b64, payload_b64, signature_b64) =
        segments(token).ok_or(Failure::MalformedToken)?;
    // The algorithm is judged first so that `alg: none` (empty signature) is reported as such.
    let (alg, kid) = judged_header(key, token, header_b64)?;
    if payload_b64.is_empty() || signature_b64.is_empty() {
        return Err(Failure::MalformedToken);
    }

    let message_len = header_b64.len() + 1 + payload_b64.len();
    let message = token
        .as_bytes()
        .get(..message_len)
        .ok_or(Failure::MalformedToken)?;
    // Rotation: the secret the token's `kid` names; without one (or a name we do not
    // hold), the first configured secret that verifies.
    let named = kid
        .as_deref()
        .and_then(|kid| key.secret.accepted().find(|s| s.kid() == Some(kid)));
    let verifies = |s: &Secret| hmac_verifies(alg, s, message, signature_b64);
    let verified = match named {
        Some(s) => verifies(s),
        None => key.secret.accepted().any(verifies),
    };
    if !verified {
        return Err(Failure::BadToken(TokenProblem::BadSignature));
    }

    decode_segment(payload_b64).ok_or(Failure::MalformedToken)
}

/// A segment's bytes: base64url without padding, strictly (no `=`, no stray bits after
/// the last byte), as RFC 7515 writes it and as the `base64` crate's `URL_SAFE_NO_PAD`
/// reads it. SIMD (`base64-simd`): the payload is most of a token, and the scalar
/// decoder cost about 1,900 instructions a request.
fn decode_segment(segment: &str) -> Option<Vec<u8>> {
    base64_simd::URL_SAFE_NO_PAD.decode_to_vec(segment).ok()
}

/// A compact token's three segments, or `None` unless it has exactly two dots. The dots
/// are found with a vectorised search: a token is a few hundred bytes, most of them payload.
pub(crate) fn segments(token: &str) -> Option<(&str, &str, &str)> {
    let mut dots = memchr::memchr_iter(b'.', token.as_bytes());
    let (first, second) = (dots.next()?, dots.next()?);
    if dots.next().is_some() {
        return None;
    }
    Some((
        token.get(..first)?,
        token.get(first + 1..second)?,
        token.get(second + 1..)?,
    ))
}

/// Whether `signature_b64` (base64url without padding, as the token carries it) is `alg`'s
/// HMAC of `message` under `secret`, compared in constant time. The HMAC crate is the one
/// `jsonwebtoken` verifies with, used here directly: its state stays on the stack, where
/// the crate's verifier copied the secret into a key and a boxed verifier per token.
fn hmac_verifies(alg: Algorithm, secret: &Secret, message: &[u8], signature_b64: &str) -> bool {
    use hmac::digest::KeyInit;
    use hmac::{Hmac, Mac};
    use sha2::{Sha384, Sha512};

    fn check<M: Mac + KeyInit>(secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(mac) = <M as KeyInit>::new_from_slice(secret) else {
            return false;
        };
        check_keyed(mac, message, signature)
    }
    fn check_keyed<M: Mac>(mut mac: M, message: &[u8], signature: &[u8]) -> bool {
        mac.update(message);
        // Refuses a tag of any other length than the algorithm's (`same_tag`).
        same_tag(&mac.finalize().into_bytes(), signature)
    }

    // Room for the longest tag (HS512: 64 bytes); a longer signature does not fit and is
    // refused before it is decoded.
    let mut room = [0u8; 64];
    let b64 = base64_simd::URL_SAFE_NO_PAD;
    let fits = b64
        .decoded_length(signature_b64.as_bytes())
        .is_ok_and(|n| n <= room.len());
    if !fits {
        return false;
    }
    let Ok(tag) = b64.decode(
        signature_b64.as_bytes(),
        base64_simd::Out::from_slice(&mut room),
    ) else {
        return false;
    };
    match alg {
        // HS256, the spec's algorithm, starts from the secret's keyed state.
        Algorithm::HS256 => secret
            .hs256()
            .is_some_and(|keyed| check_keyed(keyed.clone(), message, tag)),
        Algorithm::HS384 => check::<Hmac<Sha384>>(secret.expose(), message, tag),
        Algorithm::HS512 => check::<Hmac<Sha512>>(secret.expose(), message, tag),
        _ => false,
    }
}

/// Whether two tags are equal (never when their lengths, which are public, differ), in
/// a time that depends on their lengths alone: their difference is gathered eight bytes
/// at a time with no branch on the bytes, and compared once with `subtle` (its
/// comparison of every byte, as the `hmac` crate's `verify_slice` makes it, cost about
/// 240 instructions a token).
fn same_tag(a: &[u8], b: &[u8]) -> bool {
    let word = |w: &[u8]| w.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails = a_words.remainder().iter().zip(b_words.remainder());
    let mut diff = tails.fold(0u64, |d, (x, y)| d | u64::from(x ^ y));
    for (x, y) in a_words.zip(b_words) {
        diff |= word(x) ^ word(y);
    }
    a.len() == b.len() && bool::from(diff.ct_eq(&0))
}

/// The header segment of `token` judged: [`allowed_algorithm`], and the crate's own header
/// parser agreeing, so nothing it would read differently slips by. The verdict depends on
/// the segment's text and the accepted algorithms alone, and a peer sends the same header
/// text with every token, so each thread keeps the last segment it accepted and skips
/// both parses when the next token repeats it.
fn judged_header(
    key: &JwtKey,
    token: &str,
    header_b64: &str,
) -> Result<(Algorithm, Option<String>), Failure> {
    struct Accepted {
        segment: String,
        algorithms: Vec<Algorithm>,
        alg: Algorithm,
        kid: Option<String>,
    }
    thread_local! {
        static LAST: RefCell<Option<Accepted>> = const { RefCell::new(None) };
    }
    let seen = LAST.with(|last| {
        last.borrow()
            .as_ref()
            .filter(|a| a.segment == header_b64 && a.algorithms == key.algorithms)
            .map(|a| (a.alg, a.kid.clone()))
    });
    if let Some(verdict) = seen {
        return Ok(verdict);
    }
    let (alg, kid) = allowed_algorithm(key, header_b64)?;
    match jsonwebtoken::decode_header(token) {
        Ok(header) if header.alg == alg => {}
        _ => return Err(Failure::MalformedToken),
    }
    LAST.with(|last| {
        *last.borrow_mut() = Some(Accepted {
            segment: header_b64.to_owned(),
            algorithms: key.algorithms.clone(),
            alg,
            kid: kid.clone(),
        });
    });
    Ok((alg, kid))
}

/// Reads the JOSE header far enough to decide whether its `alg` is acceptable.
/// Also returns the header's `kid`, which names the secret to verify with.
fn allowed_algorithm(
    key: &JwtKey,
    header_b64: &str,
) -> Result<(Algorithm, Option<String>), Failure> {
    #[derive(Deserialize)]
    struct JoseHeader {
        alg: Option<String>,
        crit: Option<IgnoredAny>,
        kid: Option<String>,
    }

    let bytes = decode_segment(header_b64).ok_or(Failure::MalformedToken)?;
    let header: JoseHeader = serde_json::from_slice(&bytes).map_err(|_| Failure::MalformedToken)?;
    // We implement no JWS extensions, so a header that marks one critical must be refused.
    if header.crit.is_some() {
        return Err(Failure::MalformedToken);
    }
    let name = header.alg.ok_or(Failure::MalformedToken)?;
    // `none` and unknown names fail to parse here; both are "not allowed".
    let alg =
        Algorithm::from_str(&name).map_err(|_| Failure::BadToken(TokenProblem::AlgNotAllowed))?;
    if alg.family() != AlgorithmFamily::Hmac || !key.algorithms.contains(&alg) {
        return Err(Failure::BadToken(TokenProblem::AlgNotAllowed));
    }
    Ok((alg, header.kid))
}

/// True when `s` has the compact JWS shape: three non-empty base64url segments.
pub(crate) fn is_compact_shape(s: &str) -> bool {
    let mut segments = 0;
    for segment in s.split('.') {
        segments += 1;
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    segments == 3
}

/// The registered claims this layer checks; everything else is the application's.
#[derive(Default)]
struct TimeClaims {
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    jti: Option<String>,
    /// Not a time claim: the `encData` string beside them, read in the same pass.
    enc_data: Option<String>,
}

impl TimeClaims {
    /// Reads the claims from a validated payload's entries (none when it is not an
    /// object). A non-numeric `exp`/`nbf`/`iat` or a non-string `jti` is malformed (`null`
    /// is absent); `encData` is kept when it is a string and otherwise left alone.
    fn read(claims: Option<&Object<'_>>) -> Result<TimeClaims, Failure> {
        let Some(claims) = claims else {
            return Ok(TimeClaims::default());
        };
        let malformed = Failure::BadToken(TokenProblem::MalformedClaims);
        // One pass over the claims (the last of a name counts, as `Object::get` reads it),
        // where a look-up per claim passed them five times.
        let [mut exp, mut nbf, mut iat, mut jti, mut enc_data] = [None; 5];
        for (name, value) in claims.entries() {
            let slot = match name {
                "exp" => &mut exp,
                "nbf" => &mut nbf,
                "iat" => &mut iat,
                "jti" => &mut jti,
                "encData" => &mut enc_data,
                _ => continue,
            };
            *slot = Some(value);
        }
        let date = |raw: Option<Raw<'_>>| raw.map_or(Ok(None), numeric_date);
        let jti = match jti {
            None => None,
            Some(raw) => {
                serde_json::from_str::<Option<String>>(raw.get()).map_err(|_| malformed)?
            }
        };
        Ok(TimeClaims {
            exp: date(exp)?,
            nbf: date(nbf)?,
            iat: date(iat)?,
            jti,
            enc_data: enc_data.and_then(|v| fields::string_of(v.get()).map(Cow::into_owned)),
        })
    }

    fn check(&self, key: &JwtKey, now_unix: u64) -> Result<(), Failure> {
        let now = i128::from(now_unix);
        let leeway = i128::from(key.leeway_secs);
        match self.exp {
            None if key.require_exp => return Err(Failure::BadToken(TokenProblem::MissingExp)),
            Some(exp) if now > i128::from(exp) + leeway => {
                return Err(Failure::BadToken(TokenProblem::Expired))
            }
            _ => {}
        }
        if self.nbf.is_some_and(|nbf| now + leeway < i128::from(nbf)) {
            return Err(Failure::BadToken(TokenProblem::NotYetValid));
        }
        if self.iat.is_some_and(|iat| i128::from(iat) > now + leeway) {
            return Err(Failure::BadToken(TokenProblem::IssuedInFuture));
        }
        Ok(())
    }
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z. Anything later (`1e30`, 2^64) is
/// not a date a peer means, and read as "never expires" it would be a token valid forever.
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// A JSON NumericDate (`null`: none): an integer number of seconds from 0 to
/// [`MAX_NUMERIC_DATE`]. Fractions, exponents and out-of-range values are malformed, never
/// rounded or saturated. `raw` is checked JSON (no sign, no leading zero), so digits
/// alone, up to 16 of them, are read eight at a time ([`crate::words::digits_value`]);
/// any other text goes through `serde_json`'s number parser.
fn numeric_date(raw: Raw<'_>) -> Result<Option<i64>, Failure> {
    let malformed = Failure::BadToken(TokenProblem::MalformedClaims);
    let text = raw.get();
    let n = if let Some(n) = crate::words::digits_value(text.as_bytes()) {
        i64::try_from(n).ok()
    } else {
        match serde_json::from_str::<Option<serde_json::Number>>(text) {
            Ok(None) => return Ok(None),
            Ok(Some(n)) => n.as_i64(),
            Err(_) => None,
        }
    };
    n.filter(|v| (0..=MAX_NUMERIC_DATE).contains(v))
        .map(Some)
        .ok_or(malformed)
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    const NEW: &str = "the new secret, at least 32 bytes long";
    const OLD: &str = "the old secret, at least 32 bytes long";

    fn key(secret: Secret) -> JwtKey {
        let mut k = JwtKey::new(secret);
        k.require_exp = false;
        k
    }

    fn rotating(list: Vec<Secret>) -> JwtKey {
        key(Secret::rotating(list).unwrap())
    }

    #[test]
    fn without_kid_the_first_secret_that_verifies_is_used() {
        let both = rotating(vec![Secret::new(NEW), Secret::new(OLD)]);
        let by_old = sign(&key(Secret::new(OLD)), br#"{"a":1}"#).unwrap();
        let by_new = sign(&key(Secret::new(NEW)), br#"{"a":2}"#).unwrap();
        assert_eq!(verify(&both, &by_old, 0).unwrap().payload, br#"{"a":1}"#);
        assert_eq!(verify(&both, &by_new, 0).unwrap().payload, br#"{"a":2}"#);
        // The first one signs.
        let ours = sign(&both, b"{}").unwrap();
        assert!(verify(&key(Secret::new(NEW)), &ours, 0).is_ok());
        assert!(verify(&key(Secret::new(OLD)), &ours, 0).is_err());
        // A secret no longer listed no longer verifies.
        let other = sign(
            &key(Secret::new("a third secret, at least 32 bytes")),
            b"{}",
        )
        .unwrap();
        assert!(matches!(
            verify(&both, &other, 0),
            Err(Failure::BadToken(TokenProblem::BadSignature))
        ));
    }

    #[test]
    fn a_kid_selects_its_secret_and_signing_names_it() {
        let both = rotating(vec![
            Secret::new(NEW).with_kid("2026-12"),
            Secret::new(OLD).with_kid("2026-06"),
        ]);
        let ours = sign(&both, b"{}").unwrap();
        let header = ours.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            br#"{"alg":"HS256","typ":"JWT","kid":"2026-12"}"#
        );
        let old_named = sign(&key(Secret::new(OLD).with_kid("2026-06")), b"{}").unwrap();
        assert!(verify(&both, &old_named, 0).is_ok());
        // Named for one secret, signed with another: the named one decides.
        let mislabelled = sign(&key(Secret::new(OLD).with_kid("2026-12")), b"{}").unwrap();
        assert!(matches!(
            verify(&both, &mislabelled, 0),
            Err(Failure::BadToken(TokenProblem::BadSignature))
        ));
        // A kid we do not hold: every secret is tried.
        let unknown = sign(&key(Secret::new(OLD).with_kid("elsewhere")), b"{}").unwrap();
        assert!(verify(&both, &unknown, 0).is_ok());
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    const SECRET: &str = "a shared secret of at least 32 bytes";

    fn key(algorithms: Vec<Algorithm>) -> JwtKey {
        let mut k = JwtKey::new(Secret::new(SECRET));
        k.require_exp = false;
        k.algorithms = algorithms;
        k
    }

    #[test]
    fn a_header_accepted_under_one_key_is_judged_anew_under_another() {
        // Signed with HS384, which only `wide` accepts.
        let wide = key(vec![Algorithm::HS384, Algorithm::HS256]);
        let narrow = key(vec![Algorithm::HS256]);
        let token = sign(&wide, br#"{"a":1}"#).unwrap();
        let hs256 = sign(&narrow, br#"{"a":2}"#).unwrap();
        // In turn on one thread: the header this thread last accepted never decides
        // for a key that does not accept its algorithm.
        for _ in 0..2 {
            assert_eq!(verify(&wide, &token, 0).unwrap().payload, br#"{"a":1}"#);
            assert!(matches!(
                verify(&narrow, &token, 0),
                Err(Failure::BadToken(TokenProblem::AlgNotAllowed))
            ));
            assert_eq!(verify(&narrow, &hs256, 0).unwrap().payload, br#"{"a":2}"#);
            assert_eq!(verify(&wide, &hs256, 0).unwrap().payload, br#"{"a":2}"#);
        }
        // A header that differs from the accepted one by any byte is read again.
        let (_, rest) = token.split_once('.').unwrap();
        let none = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert!(matches!(
            verify(&wide, &none, 0),
            Err(Failure::BadToken(TokenProblem::AlgNotAllowed))
        ));
        let critical = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS384","crit":["x"]}"#);
        assert!(matches!(
            verify(&wide, &format!("{critical}.{rest}"), 0),
            Err(Failure::MalformedToken)
        ));
    }
}

#[cfg(test)]
mod hmac_tests {
    use super::*;

    const SECRET_BYTES: &[u8] = b"a shared secret of at least 32 bytes";

    fn secret() -> Secret {
        Secret::new(SECRET_BYTES)
    }

    /// `message` signed by `jsonwebtoken` itself, as `(message, signature)`.
    fn signed(alg: Algorithm) -> (String, String) {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg:?}"}}"#));
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode("{}"));
        let key = EncodingKey::from_secret(SECRET_BYTES);
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
        (message, signature)
    }

    /// Tags compared a word at a time, and the bytes past the last whole word one by one:
    /// equal only when every byte is, and never when the lengths differ.
    #[test]
    fn tags_are_equal_only_when_every_byte_is() {
        for len in 0..=70 {
            let a: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            assert!(same_tag(&a, &a.clone()), "{len}");
            for at in 0..len {
                for bit in 0..8 {
                    let mut b = a.clone();
                    b[at] ^= 1 << bit;
                    assert!(!same_tag(&a, &b), "{len} {at} {bit}");
                }
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same_tag(&a, &longer) && !same_tag(&longer, &a), "{len}");
        }
    }

    #[test]
    fn tags_made_by_jsonwebtoken_verify_and_any_change_to_them_is_refused() {
        let (secret, another) = (secret(), Secret::new("another secret"));
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let (message, sig) = signed(alg);
            assert!(
                hmac_verifies(alg, &secret, message.as_bytes(), &sig),
                "{alg:?}"
            );
            assert!(!hmac_verifies(alg, &another, message.as_bytes(), &sig));
            assert!(!hmac_verifies(alg, &secret, b"another message", &sig));
            // Truncated, lengthened (past the room for any tag, too), one character changed,
            // padded, not base64url.
            let shorter = sig.get(..sig.len() - 2).unwrap();
            let mut flipped = sig.clone().into_bytes();
            flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
            let flipped = String::from_utf8(flipped).unwrap();
            // The last character with its lowest bit flipped: for HS256 and HS512 a bit past
            // the tag's last byte (the encoding is no longer canonical), for HS384 a tag bit.
            const URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let last = URL
                .iter()
                .position(|&c| c == *sig.as_bytes().last().unwrap())
                .unwrap();
            let stray = format!("{}{}", &sig[..sig.len() - 1], URL[last ^ 1] as char);
            for bad in [
                stray,
                shorter.to_owned(),
                format!("{sig}AA"),
                format!("{sig}{}", "A".repeat(100)),
                flipped,
                format!("{sig}="),
                sig.replace(|c: char| c.is_ascii_alphanumeric(), "+"),
                String::new(),
            ] {
                assert!(
                    !hmac_verifies(alg, &secret, message.as_bytes(), &bad),
                    "{alg:?} {bad}"
                );
            }
            // Every bit of the tag, one at a time, flipped: each word of the comparison.
            let tag = URL_SAFE_NO_PAD.decode(&sig).unwrap();
            for bit in 0..tag.len() * 8 {
                let mut changed = tag.clone();
                changed[bit / 8] ^= 1 << (bit % 8);
                let changed = URL_SAFE_NO_PAD.encode(&changed);
                assert!(
                    !hmac_verifies(alg, &secret, message.as_bytes(), &changed),
                    "{alg:?}: bit {bit}"
                );
            }
            // Another algorithm's tag over the same message.
            for other in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                if other != alg {
                    let (_, theirs) = signed(other);
                    assert!(!hmac_verifies(alg, &secret, message.as_bytes(), &theirs));
                }
            }
        }
        // Not an HMAC algorithm: never verifies, whatever the tag.
        let (message, sig) = signed(Algorithm::HS256);
        assert!(!hmac_verifies(
            Algorithm::RS256,
            &secret,
            message.as_bytes(),
            &sig
        ));
    }

    /// The keyed HS256 state a secret keeps is made once and gives every token the tag a
    /// fresh keying gives: for a short secret, one of exactly a block, and one longer than a
    /// block (hashed first, as RFC 2104 says), across many verifications and clones of the
    /// secret (a reload's copy starts from its own bytes).
    #[test]
    fn the_kept_hs256_state_verifies_as_a_fresh_keying_does() {
        for key in [&b"k"[..], &[7u8; 64][..], &[9u8; 200][..]] {
            let kept = Secret::new(key);
            let copy = kept.clone();
            for n in 0..5 {
                let message = format!("eyJhbGciOiJIUzI1NiJ9.{}", "x".repeat(n * 37));
                let tag = jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(key),
                    Algorithm::HS256,
                )
                .unwrap();
                assert!(hmac_verifies(
                    Algorithm::HS256,
                    &kept,
                    message.as_bytes(),
                    &tag
                ));
                assert!(hmac_verifies(
                    Algorithm::HS256,
                    &copy,
                    message.as_bytes(),
                    &tag
                ));
                assert!(!hmac_verifies(
                    Algorithm::HS256,
                    &kept,
                    format!("{message}y").as_bytes(),
                    &tag
                ));
            }
            let once = kept.hs256().unwrap();
            assert!(std::ptr::eq(once, kept.hs256().unwrap()), "made once");
        }
    }

    proptest::proptest! {
        /// The SIMD segment decoder agrees with the `base64` crate's strict
        /// `URL_SAFE_NO_PAD`, which decoded segments before it: on the encoding of any
        /// bytes, and on any text over base64url, `=`, the standard alphabet's `+` and `/`,
        /// and characters outside them all.
        #[test]
        fn segments_decode_as_the_scalar_decoder_decodes_them(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            noise in proptest::collection::vec(
                proptest::sample::select(vec!['A', 'Q', 'g', 'w', '0', '-', '_', '=', '+', '/', ' ', '.', 'é']),
                0..40,
            ),
        ) {
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            proptest::prop_assert_eq!(decode_segment(&text), Some(bytes));
            let noise: String = noise.into_iter().collect();
            proptest::prop_assert_eq!(decode_segment(&noise), URL_SAFE_NO_PAD.decode(&noise).ok());
        }
    }
}

#[cfg(test)]
mod numeric_date_tests {
    use super::*;

    /// Digits alone are read without a parser: every length up to the 16 read so, at
    /// each power of ten and one below it, and the range's edges, read as `i64`'s own
    /// parser and the range check read them; 17 digits and more go to `serde_json`.
    #[test]
    fn digits_are_read_as_the_parser_reads_them_at_every_length() {
        let read = |text: &str| numeric_date(Raw::checked(text)).ok().flatten();
        let mut texts = vec![
            "0".to_owned(),
            MAX_NUMERIC_DATE.to_string(),
            (MAX_NUMERIC_DATE + 1).to_string(),
            "1700000000".to_owned(),
            "9223372036854775807".to_owned(),
            "9223372036854775808".to_owned(),
        ];
        for digits in 1..=19u32 {
            let power = 10u128.pow(digits - 1);
            texts.push(power.to_string());
            texts.push((power * 10 - 1).to_string());
            texts.push((power * 7 + 3).to_string());
        }
        for text in &texts {
            let expected = text
                .parse::<i64>()
                .ok()
                .filter(|v| (0..=MAX_NUMERIC_DATE).contains(v));
            assert_eq!(read(text), expected, "{text}");
        }
        assert_eq!(read("253402300799"), Some(253_402_300_799));
        assert_eq!(read("1700000000"), Some(1_700_000_000));
        assert_eq!(read("253402300800"), None);
        assert_eq!(read("999999999999999999"), None);
        assert_eq!(read("null"), None);
        assert!(numeric_date(Raw::checked("null")).is_ok());
    }
}
