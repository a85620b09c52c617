//! Secret values (keys, passcodes, JWT secrets): never printed, compared in constant time.

use std::fmt;

use subtle::ConstantTimeEq;

/// Bytes that must never reach a log line, a `Debug` print or an error message.
///
/// `Debug` and `Display` print `***`; equality is constant-time in the content (the length
/// of a secret is not treated as secret).
#[derive(Clone, Default)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into().into_boxed_slice())
    }

    /// The raw bytes, for the crypto that needs them. Never log the result.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time comparison against what a caller presented.
    pub fn matches(&self, presented: &[u8]) -> bool {
        // `ct_eq` on slices of different lengths returns false without looking at content.
        bool::from(self.0.as_ref().ct_eq(presented))
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
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
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
    fn matches_only_the_exact_bytes() {
        let s = Secret::new("376423");
        assert!(s.matches(b"376423"));
        assert!(!s.matches(b"376424"));
        assert!(!s.matches(b"37642"));
        assert!(!s.matches(b"3764233"));
        assert!(!s.matches(b""));
    }
}
