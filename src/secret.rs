//! Secret values (keys, passcodes, JWT secrets): never printed, compared in constant time,
//! overwritten with zeros when dropped.
//!
//! `zeroize` rather than `secrecy`'s wrapper: the wrapper would hold the bytes but not the
//! rotation list, the `kid` and the constant-time comparison this type carries, so it would
//! add a layer without removing any of this code.

use std::fmt;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Bytes that must never reach a log line, a `Debug` print or an error message; zeroed
/// in memory when the value is dropped (and the input it was made from, when owned).
///
/// `Debug` and `Display` print `***`; equality is constant-time in the content (the length
/// of a secret is not treated as secret).
///
/// During a rotation a secret also carries the values still accepted beside it
/// ([`Secret::rotating`]): the first one seals and signs, every one is accepted; a JWT
/// secret may be named by a `kid`.
#[derive(Clone, Default)]
pub struct Secret {
    bytes: Box<[u8]>,
    kid: Option<Box<str>>,
    /// Older (or newer) values still accepted, in the configured order.
    also: Vec<Secret>,
    /// HMAC-SHA256 keyed with this value, made on first use: the key's two padded blocks
    /// are hashed once, not for every token verified (two of a token's eight or so
    /// SHA-256 blocks). Holds what the key is worth to a forger, so it is as secret as
    /// the bytes; overwritten when the value is dropped.
    hs256: OnceLock<Option<Hmac<Sha256>>>,
}

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        let mut owned: Vec<u8> = bytes.into();
        // A copy of exactly the length, then the whole of the original's capacity zeroed:
        // `into_boxed_slice` would leave a reallocated buffer's old bytes behind.
        let exact = Box::<[u8]>::from(owned.as_slice());
        owned.zeroize();
        Secret {
            bytes: exact,
            kid: None,
            also: Vec::new(),
            hs256: OnceLock::new(),
        }
    }

    /// This secret named by `kid` (the JWS header parameter that selects a JWT secret).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into().into_boxed_str());
        self
    }

    /// The `kid` naming this secret, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Several values for one secret, as listed during a rotation: the first seals and
    /// signs, all are accepted. `None` for an empty list.
    pub fn rotating(list: Vec<Secret>) -> Option<Self> {
        let mut all = list.into_iter().flat_map(Secret::into_accepted);
        let mut first = all.next()?;
        first.also = all.collect();
        Some(first)
    }

    fn into_accepted(mut self) -> Vec<Secret> {
        let also = std::mem::take(&mut self.also);
        std::iter::once(self).chain(also).collect()
    }

    /// Every accepted value, the sealing one first. Each yielded secret's own
    /// [`Secret::expose`] and [`Secret::kid`] describe that one value.
    pub fn accepted(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(self).chain(self.also.iter())
    }

    /// The raw bytes of the value that seals and signs, for the crypto that needs them.
    /// Never log the result.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    /// HMAC-SHA256 keyed with the sealing value, ready for a message: clone it, then
    /// update and finalize the clone. Never log it. (`None` if the key were refused,
    /// which HMAC never does: a key of any length is taken, a long one hashed first.)
    pub fn hs256(&self) -> Option<&Hmac<Sha256>> {
        self.hs256
            .get_or_init(|| <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes).ok())
            .as_ref()
    }

    /// Length of the sealing value.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Length of the shortest accepted value.
    pub fn shortest(&self) -> usize {
        self.accepted().map(|s| s.bytes.len()).min().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Constant-time comparison against what a caller presented: true when it is any
    /// accepted value. Every value is compared, whichever matches.
    pub fn matches(&self, presented: &[u8]) -> bool {
        // `ct_eq` on slices of different lengths returns false without looking at content.
        let found = self.accepted().fold(subtle::Choice::from(0), |found, s| {
            found | s.bytes.as_ref().ct_eq(presented)
        });
        bool::from(found)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
        // The keyed state has no zeroizing of its own: it is overwritten in place by one
        // keyed with nothing, and `black_box` keeps the compiler from dropping the write.
        if let Some(Some(mac)) = self.hs256.get_mut() {
            *mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default());
            std::hint::black_box(mac);
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    /// Same values, same names, same order.
    fn eq(&self, other: &Self) -> bool {
        self.accepted().count() == other.accepted().count()
            && self.accepted().zip(other.accepted()).all(|(a, b)| {
                bool::from(a.bytes.as_ref().ct_eq(b.bytes.as_ref())) && a.kid == b.kid
            })
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
    }

    #[test]
    fn a_rotating_secret_seals_with_the_first_and_accepts_every_one() {
        let s = Secret::rotating(vec![
            Secret::new("new-passcode"),
            Secret::new("old-passcode"),
        ])
        .unwrap();
        assert_eq!(s.expose(), b"new-passcode");
        assert!(s.matches(b"new-passcode"));
        assert!(s.matches(b"old-passcode"));
        assert!(!s.matches(b"other"));
        assert_eq!(s.accepted().count(), 2);
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.shortest(), 12);
        assert!(Secret::rotating(Vec::new()).is_none());
        // A single value is the plain secret.
        assert_eq!(
            Secret::rotating(vec![Secret::new("x")]).unwrap(),
            Secret::new("x")
        );
        assert_ne!(s, Secret::new("new-passcode"));
    }

    #[test]
    fn kids_name_values() {
        let s = Secret::rotating(vec![
            Secret::new("b").with_kid("2026-12"),
            Secret::new("a").with_kid("2026-06"),
        ])
        .unwrap();
        let kids: Vec<_> = s.accepted().map(|v| v.kid()).collect();
        assert_eq!(kids, [Some("2026-12"), Some("2026-06")]);
        assert_ne!(
            s,
            Secret::rotating(vec![Secret::new("b"), Secret::new("a")]).unwrap()
        );
    }

    #[test]
    fn an_owned_input_with_spare_capacity_keeps_exactly_its_bytes() {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(b"376423");
        let s = Secret::new(v);
        assert_eq!((s.expose(), s.len()), (&b"376423"[..], 6));
        let cloned = s.clone();
        drop(s);
        assert_eq!(cloned.expose(), b"376423", "a clone owns its own copy");
    }

    #[test]
    fn matches_only_the_exact_bytes() {
        let s = Secret::new("376423");
        assert!(s.matches(b"376423"));
        assert!(!s.matches(b"376424"));
        assert!(!s.matches(b"37642"));
        assert!(!s.matches(b"3764233"));
        assert!(!s.matches(b""));
    }
}
