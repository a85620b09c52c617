//! Builds one probe request layer by layer, correct or with one thing deliberately wrong:
//! a mutated AES ciphertext, a JWT with a forged header or wrong secret or bad times, a
//! wrong passcode. Pure functions; nothing here touches the network.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::envelope::aes::{self, AesKey};
use crate::envelope::{form, BodyShape, Layer, PeerKeys};

/// What the `aes` layer does to the ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AesFault {
    None,
    /// One bit flipped in the first block: the padding stays valid, the plaintext is garbage.
    Tampered,
    /// The last plaintext byte forced to 0: invalid PKCS#7 padding under the right key.
    BadPadding,
    /// Encrypted under a key and IV the peer does not have.
    WrongKey,
    /// The base64 text cut short (not decodable).
    Truncated,
    /// A correctly encrypted plaintext that is not JSON.
    NotJson,
}

impl AesFault {
    pub const ALL: [AesFault; 5] = [
        AesFault::Tampered,
        AesFault::BadPadding,
        AesFault::WrongKey,
        AesFault::Truncated,
        AesFault::NotJson,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AesFault::None => "correct ciphertext",
            AesFault::Tampered => "tampered ciphertext",
            AesFault::BadPadding => "bad padding",
            AesFault::WrongKey => "wrong key",
            AesFault::Truncated => "truncated base64",
            AesFault::NotJson => "non-JSON plaintext",
        }
    }
}

/// How the `jwt` layer signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenFault {
    None,
    /// Header `alg` set to this spelling of `none`, no signature.
    AlgNone(&'static str),
    /// Header and signature HS512 with the right secret (an algorithm not pinned).
    Hs512,
    /// Header says RS256, signature is HS256 with the secret (algorithm confusion).
    Rs256Header,
    /// HS256 with a secret the peer does not have.
    WrongSecret,
    /// `iat` two hours ago, `exp` one hour ago.
    Expired,
    /// `iat` now, no `exp`.
    NoExp,
    /// `iat` this many seconds ago, `exp` five minutes ahead.
    IssuedAgo(u64),
}

/// What the passcode (in a `token` body, as `X-Passcode` for `bearer`, or inside the
/// plaintext for `passcode`) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasscodeFault {
    None,
    Wrong,
    Missing,
    /// The JSON number 0 (loose comparison in PHP and JavaScript takes `0 == "abc"`).
    Numeric,
}

/// One request: the plaintext and what (at most) to get wrong.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// The innermost JSON (an object).
    pub plain: String,
    pub aes: AesFault,
    pub token: TokenFault,
    pub passcode: PasscodeFault,
    /// Unique per request, for the `jti` claim.
    pub jti: String,
    pub now: u64,
}

/// A request ready to send.
#[derive(Clone)]
pub struct Built {
    pub content_type: &'static str,
    pub authorization: Option<String>,
    pub passcode_header: Option<String>,
    pub body: Vec<u8>,
}

/// Why a request could not be built (a key the stack needs is missing).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CraftError {
    #[error("the stack needs {0}, which was not given")]
    Missing(&'static str),
    #[error("the layer stack is not one the spec uses")]
    Stack,
}

const WRONG_KEY: &[u8; 32] = b"PROBEWRONGKEY0000000000000000000";
const WRONG_IV: &[u8; 16] = b"PROBEWRONGIV0000";
const WRONG_SECRET: &[u8] = b"probe-wrong-secret-not-the-peers-0123456789";

fn passcode_str(keys: &PeerKeys) -> Result<String, CraftError> {
    let p = keys
        .passcode
        .as_ref()
        .ok_or(CraftError::Missing("a passcode"))?;
    Ok(String::from_utf8_lossy(p.expose()).into_owned())
}

/// Adds `"name":value` (raw JSON) at the start of a JSON object's text.
pub fn splice(object: &str, name: &str, raw_value: &str) -> String {
    let t = object.trim();
    match t.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"{name}\":{raw_value}}}"),
        Some(rest) => format!("{{\"{name}\":{raw_value},{rest}"),
        None => t.to_string(),
    }
}

fn passcode_value(keys: &PeerKeys, fault: PasscodeFault) -> Result<Option<String>, CraftError> {
    Ok(match fault {
        PasscodeFault::None => Some(serde_json::Value::String(passcode_str(keys)?).to_string()),
        PasscodeFault::Wrong => Some("\"probe-wrong-passcode\"".into()),
        PasscodeFault::Missing => None,
        PasscodeFault::Numeric => Some("0".into()),
    })
}

/// Signs `claims` (a JSON object's text) as `fault` says.
fn token(
    keys: &PeerKeys,
    claims: &str,
    fault: &TokenFault,
    now: u64,
    jti: &str,
) -> Result<String, CraftError> {
    let jwt = keys
        .jwt
        .as_ref()
        .ok_or(CraftError::Missing("a JWT secret"))?;
    let (iat, exp) = match fault {
        TokenFault::Expired => (
            Some(now.saturating_sub(7200)),
            Some(now.saturating_sub(3600)),
        ),
        TokenFault::NoExp => (Some(now), None),
        TokenFault::IssuedAgo(s) => (Some(now.saturating_sub(*s)), Some(now + 300)),
        _ => (Some(now), Some(now + 300)),
    };
    let mut claims = splice(
        claims,
        "jti",
        &serde_json::Value::String(jti.into()).to_string(),
    );
    if let Some(exp) = exp {
        claims = splice(&claims, "exp", &exp.to_string());
    }
    if let Some(iat) = iat {
        claims = splice(&claims, "iat", &iat.to_string());
    }
    let (header_alg, sign_alg, secret): (&str, Option<Algorithm>, &[u8]) = match fault {
        TokenFault::AlgNone(spelling) => (spelling, None, b""),
        TokenFault::Hs512 => ("HS512", Some(Algorithm::HS512), jwt.secret.expose()),
        TokenFault::Rs256Header => ("RS256", Some(Algorithm::HS256), jwt.secret.expose()),
        TokenFault::WrongSecret => ("HS256", Some(Algorithm::HS256), WRONG_SECRET),
        _ => ("HS256", Some(Algorithm::HS256), jwt.secret.expose()),
    };
    let header = format!(r#"{{"alg":"{header_alg}","typ":"JWT"}}"#);
    let mut t = URL_SAFE_NO_PAD.encode(header);
    t.push('.');
    URL_SAFE_NO_PAD.encode_string(claims.as_bytes(), &mut t);
    let sig = match sign_alg {
        Some(alg) => {
            jsonwebtoken::crypto::sign(t.as_bytes(), &EncodingKey::from_secret(secret), alg)
                .map_err(|_| CraftError::Missing("a usable JWT secret"))?
        }
        None => String::new(),
    };
    t.push('.');
    t.push_str(&sig);
    Ok(t)
}

fn encrypt(keys: &PeerKeys, plain: &[u8], fault: AesFault) -> Result<String, CraftError> {
    let key = keys.aes.first().ok_or(CraftError::Missing("an AES key"))?;
    Ok(match fault {
        AesFault::None => aes::encrypt(key, plain),
        AesFault::NotJson => aes::encrypt(key, b"probe: this plaintext is not JSON"),
        AesFault::WrongKey => {
            let wrong = AesKey::new(WRONG_KEY, WRONG_IV).map_err(|_| CraftError::Stack)?;
            aes::encrypt(&wrong, plain)
        }
        AesFault::Truncated => {
            let b64 = aes::encrypt(key, plain);
            let keep = b64.len().saturating_sub(3);
            b64.get(..keep).unwrap_or_default().to_string()
        }
        AesFault::Tampered => {
            let mut ct = aes::encrypt_raw(key, plain);
            if let Some(b) = ct.first_mut() {
                *b ^= 0x01;
            }
            STANDARD.encode(ct)
        }
        AesFault::BadPadding => {
            // The last plaintext byte is the pad length p; XOR-ing the byte above it in the
            // previous ciphertext block with p makes it 0, which no PKCS#7 padding ends with.
            let mut ct = aes::encrypt_raw(key, plain);
            let pad = (16 - plain.len() % 16) as u8;
            let at = ct.len().saturating_sub(17);
            if ct.len() >= 32 {
                if let Some(b) = ct.get_mut(at) {
                    *b ^= pad;
                }
            }
            STANDARD.encode(ct)
        }
    })
}

enum Carried {
    Json(String),
    Text(String),
}

impl Carried {
    fn into_text(self) -> String {
        match self {
            Carried::Json(s) | Carried::Text(s) => s,
        }
    }
}

/// Builds `recipe` in `layers` (outermost first) for the peer `keys`.
pub fn build(
    layers: &[Layer],
    keys: &PeerKeys,
    recipe: &Recipe,
    shape: BodyShape,
) -> Result<Built, CraftError> {
    let Some((&outer, inner)) = layers.split_first() else {
        return Err(CraftError::Stack);
    };
    let mut plain = recipe.plain.clone();
    if layers.contains(&Layer::Passcode) {
        if let Some(v) = passcode_value(keys, recipe.passcode)? {
            plain = splice(&plain, "passcode", &v);
        }
    }
    let framing = matches!(outer, Layer::Form | Layer::Token | Layer::Bearer);
    let to_seal: &[Layer] = if framing { inner } else { layers };
    let text = seal_inner(to_seal, keys, recipe, plain)?;
    frame(outer, keys, recipe, shape, text)
}

/// The layers inside the framing, innermost first, applied to `plain`.
fn seal_inner(
    to_seal: &[Layer],
    keys: &PeerKeys,
    recipe: &Recipe,
    plain: String,
) -> Result<String, CraftError> {
    let mut made = Carried::Json(plain);
    for &layer in to_seal.iter().rev() {
        made = match layer {
            Layer::Passcode => made,
            Layer::Aes => {
                let bytes = match &made {
                    Carried::Json(s) | Carried::Text(s) => s.as_bytes(),
                };
                Carried::Text(encrypt(keys, bytes, recipe.aes)?)
            }
            Layer::Jwt => {
                let claims = match made {
                    Carried::Json(s) => s,
                    Carried::Text(t) => serde_json::json!({ "encData": t }).to_string(),
                };
                Carried::Text(token(
                    keys,
                    &claims,
                    &recipe.token,
                    recipe.now,
                    &recipe.jti,
                )?)
            }
            Layer::Form | Layer::Token | Layer::Bearer => return Err(CraftError::Stack),
        };
    }
    Ok(made.into_text())
}

/// `text` in the outer layer's framing: a form, a `{"token":…}` object, a bearer header,
/// or the text alone when the outer layer is not a framing.
fn frame(
    outer: Layer,
    keys: &PeerKeys,
    recipe: &Recipe,
    shape: BodyShape,
    text: String,
) -> Result<Built, CraftError> {
    let passcode_json = |fault| passcode_value(keys, fault);
    Ok(match outer {
        Layer::Form => {
            let (body, content_type) = form::seal(&keys.agid, &text, shape);
            Built {
                content_type,
                authorization: None,
                passcode_header: None,
                body,
            }
        }
        Layer::Token => {
            let body = match passcode_json(recipe.passcode)? {
                Some(p) => format!(
                    r#"{{"passcode":{p},"token":{}}}"#,
                    serde_json::Value::String(text)
                ),
                None => serde_json::json!({ "token": text }).to_string(),
            };
            Built {
                content_type: form::JSON_CONTENT_TYPE,
                authorization: None,
                passcode_header: None,
                body: body.into_bytes(),
            }
        }
        Layer::Bearer => {
            let body = if keys.passcode.is_some() {
                match passcode_json(recipe.passcode)? {
                    Some(p) => format!(r#"{{"passcode":{p}}}"#),
                    None => "{}".into(),
                }
            } else {
                String::new()
            };
            Built {
                content_type: form::JSON_CONTENT_TYPE,
                authorization: Some(format!("Bearer {text}")),
                passcode_header: None,
                body: body.into_bytes(),
            }
        }
        Layer::Aes | Layer::Jwt | Layer::Passcode => Built {
            content_type: "text/plain",
            authorization: None,
            passcode_header: None,
            body: text.into_bytes(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::jwt::JwtKey;
    use crate::envelope::{self, Failure, Incoming, Undecryptable};
    use crate::secret::Secret;

    fn keys() -> PeerKeys {
        let mut jwt = JwtKey::new(Secret::new(
            b"probe-unit-test-secret-0123456789abcdef".to_vec(),
        ));
        jwt.require_exp = true;
        PeerKeys {
            agid: "BSK".into(),
            passcode: Some(Secret::new(b"376423".to_vec())),
            jwt: Some(jwt),
            aes: vec![
                AesKey::new(b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", b"V0ZMZO6WZ45KY2PL").unwrap(),
            ],
        }
    }

    fn recipe(now: u64) -> Recipe {
        Recipe {
            plain: r#"{"userid":9054233544,"ticketNo":20221202153322882}"#.into(),
            aes: AesFault::None,
            token: TokenFault::None,
            passcode: PasscodeFault::None,
            jti: "t1".into(),
            now,
        }
    }

    fn open(layers: &[Layer], b: &Built, now: u64) -> Result<envelope::Opened, Failure> {
        let req = Incoming {
            content_type: Some(b.content_type),
            authorization: b.authorization.as_deref(),
            passcode_header: b.passcode_header.as_deref(),
            body: &b.body,
        };
        let stack = envelope::Stack::new(layers).unwrap_or_else(|p| panic!("{p:?}"));
        envelope::open(&stack, &keys(), &req, now)
    }

    const STACKS: [&[Layer]; 6] = [
        &[Layer::Form, Layer::Aes],
        &[Layer::Token, Layer::Jwt],
        &[Layer::Bearer, Layer::Jwt],
        &[Layer::Token, Layer::Jwt, Layer::Aes],
        &[Layer::Form, Layer::Aes, Layer::Jwt],
        &[Layer::Form, Layer::Aes, Layer::Passcode],
    ];

    #[test]
    fn a_correct_recipe_opens_in_every_stack() {
        let now = 1_700_000_000;
        for layers in STACKS {
            let b = build(layers, &keys(), &recipe(now), BodyShape::Form).unwrap();
            let opened = open(layers, &b, now).unwrap_or_else(|e| panic!("{layers:?}: {e}"));
            let text = String::from_utf8(opened.plain).unwrap();
            assert!(text.contains("20221202153322882"), "{layers:?}: {text}");
        }
    }

    #[test]
    fn each_aes_fault_is_refused_for_its_own_cause() {
        let now = 1_700_000_000;
        let layers = &[Layer::Form, Layer::Aes];
        let cause = |f| {
            let r = Recipe {
                aes: f,
                ..recipe(now)
            };
            let b = build(layers, &keys(), &r, BodyShape::Form).unwrap();
            match open(layers, &b, now) {
                Err(Failure::Undecryptable(u)) => u,
                other => panic!("{f:?}: {other:?}"),
            }
        };
        assert_eq!(cause(AesFault::BadPadding), Undecryptable::BadPadding);
        assert_eq!(cause(AesFault::Truncated), Undecryptable::BadBase64);
        assert_eq!(cause(AesFault::NotJson), Undecryptable::NotJson);
        assert!(matches!(
            cause(AesFault::Tampered),
            Undecryptable::NotUtf8 | Undecryptable::NotJson
        ));
        assert!(matches!(
            cause(AesFault::WrongKey),
            Undecryptable::BadPadding | Undecryptable::NotUtf8 | Undecryptable::NotJson
        ));
    }

    #[test]
    fn each_token_and_passcode_fault_is_refused() {
        let now = 1_700_000_000;
        let layers = &[Layer::Token, Layer::Jwt];
        let faults = [
            TokenFault::AlgNone("none"),
            TokenFault::AlgNone("nOnE"),
            TokenFault::Hs512,
            TokenFault::Rs256Header,
            TokenFault::WrongSecret,
            TokenFault::Expired,
            TokenFault::NoExp,
        ];
        for f in faults {
            let r = Recipe {
                token: f.clone(),
                ..recipe(now)
            };
            let b = build(layers, &keys(), &r, BodyShape::Json).unwrap();
            assert!(open(layers, &b, now).is_err(), "{f:?} was accepted");
        }
        for p in [
            PasscodeFault::Wrong,
            PasscodeFault::Missing,
            PasscodeFault::Numeric,
        ] {
            for layers in [
                &[Layer::Token, Layer::Jwt][..],
                &[Layer::Form, Layer::Aes, Layer::Passcode],
            ] {
                let r = Recipe {
                    passcode: p,
                    ..recipe(now)
                };
                let b = build(layers, &keys(), &r, BodyShape::Form).unwrap();
                let err = open(layers, &b, now).err();
                match p {
                    // `{"token":…}` alone is not the token layer's shape at all.
                    PasscodeFault::Missing => assert!(err.is_some(), "{layers:?}"),
                    _ => assert_eq!(err, Some(Failure::BadPasscode), "{p:?} {layers:?}"),
                }
            }
        }
    }
}
