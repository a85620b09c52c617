//! Structural bounds on the opened JSON — nesting depth, number of values, string
//! length — checked on every route before anything parses the document into a tree,
//! so a JSON bomb is refused before it costs memory (in the sidecar or the application).
//!
//! The scan is a single pass over bytes already known to be JSON; the inside of a string
//! is crossed from one quote or backslash to the next. The payload check
//! (`guard::payload`) counts the same bounds, the same way, in its own pass, so an opened
//! payload is read once; this scan is the check on its own.
//!
//! ```
//! use bsk_sidecar::guard::bounds::JsonBounds;
//! let b = JsonBounds { max_depth: 2, max_values: 100, max_string: 16 };
//! assert!(b.check(br#"{"a":[1,2]}"#).is_ok());
//! assert!(b.check(br#"{"a":[[1]]}"#).is_err());
//! ```

/// Limits for one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonBounds {
    /// Deepest nesting of objects and arrays.
    pub max_depth: usize,
    /// Object members plus array elements, in the whole document.
    pub max_values: usize,
    /// Longest string (key or value), in bytes as written.
    pub max_string: usize,
}

impl Default for JsonBounds {
    fn default() -> Self {
        JsonBounds {
            max_depth: 32,
            max_values: 10_000,
            max_string: 256 * 1024,
        }
    }
}

/// Which bound a document broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TooComplex {
    #[error("JSON nested deeper than {0} levels")]
    Depth(usize),
    #[error("JSON has more than {0} values")]
    Values(usize),
    #[error("JSON string longer than {0} bytes")]
    String(usize),
}

impl JsonBounds {
    pub fn check(&self, json: &[u8]) -> Result<(), TooComplex> {
        let mut tally = Tally::new(*self);
        let mut rest = json;
        while let Some((&b, tail)) = rest.split_first() {
            rest = tail;
            match b {
                b'"' => rest = skip_string(&tally, rest)?,
                b'{' | b'[' => tally.open()?,
                b'}' | b']' => tally.close(),
                b',' | b':' => tally.separator()?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// From just past a string's opening quote: what follows its closing quote (nothing when
/// it is never closed). Jumps from one `"` or `\` to the next rather than looking at every
/// byte: most of a payload is the inside of strings.
fn skip_string<'a>(tally: &Tally, mut s: &'a [u8]) -> Result<&'a [u8], TooComplex> {
    let mut len = 0usize;
    loop {
        let (ordinary, special) = match memchr::memchr2(b'"', b'\\', s) {
            Some(at) => s.split_at(at),
            None => (s, &[][..]),
        };
        len += ordinary.len();
        let rest = match special.split_first() {
            Some((b'"', after)) => Some(after),
            // A backslash and the byte it escapes (which may be a quote) both count.
            Some((_, after)) => {
                len += 1 + usize::from(!after.is_empty());
                s = after.get(1..).unwrap_or_default();
                None
            }
            None => Some(special),
        };
        tally.string(len)?;
        if let Some(after) = rest {
            return Ok(after);
        }
    }
}

/// A document's structure counted against its bounds as one pass meets it — by
/// [`JsonBounds::check`] and by the payload check (`guard::payload`), so both count alike.
pub(crate) struct Tally {
    bounds: JsonBounds,
    depth: usize,
    /// Members and elements so far: each container, and each `,` and `:`.
    values: usize,
}

impl Tally {
    pub(crate) fn new(bounds: JsonBounds) -> Tally {
        Tally {
            bounds,
            depth: 0,
            values: 0,
        }
    }

    /// Into an object or array: one level deeper (refused past the bound before the pass
    /// goes there), one value more.
    pub(crate) fn open(&mut self) -> Result<(), TooComplex> {
        self.depth += 1;
        if self.depth > self.bounds.max_depth {
            return Err(TooComplex::Depth(self.bounds.max_depth));
        }
        self.values = self.values.saturating_add(1);
        Ok(())
    }

    pub(crate) fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// A `,` or `:`, which starts one more member or element.
    pub(crate) fn separator(&mut self) -> Result<(), TooComplex> {
        self.values = self.values.saturating_add(1);
        if self.values > self.bounds.max_values {
            return Err(TooComplex::Values(self.bounds.max_values));
        }
        Ok(())
    }

    /// A string of `len` bytes as written (escapes and all), or of its first `len`.
    pub(crate) fn string(&self, len: usize) -> Result<(), TooComplex> {
        if len > self.bounds.max_string {
            return Err(TooComplex::String(self.bounds.max_string));
        }
        Ok(())
    }

    /// How deep the pass is.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: JsonBounds = JsonBounds {
        max_depth: 4,
        max_values: 10,
        max_string: 8,
    };

    #[test]
    fn depth_counts_objects_and_arrays() {
        assert!(B.check(br#"{"a":{"b":[[1]]}}"#).is_ok());
        assert_eq!(
            B.check(br#"{"a":{"b":[[[1]]]}}"#),
            Err(TooComplex::Depth(4))
        );
        let bomb = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(
            JsonBounds::default().check(bomb.as_bytes()),
            Err(TooComplex::Depth(32))
        );
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert!(B.check(br#"{"a":"[[[[["}"#).is_ok());
        assert!(B.check(br#"{"a":"\"[[[["}"#).is_ok());
    }

    #[test]
    fn values_and_strings_are_bounded() {
        assert!(B.check(b"[1,2,3,4,5]").is_ok());
        assert_eq!(
            B.check(b"[1,2,3,4,5,6,7,8,9,10,11,12]"),
            Err(TooComplex::Values(10))
        );
        assert!(B.check(br#"{"k":"12345678"}"#).is_ok());
        assert_eq!(B.check(br#"{"k":"123456789"}"#), Err(TooComplex::String(8)));
    }

    /// The scan as it was, byte by byte inside strings too: the model the jumping one
    /// must agree with.
    fn bytewise(b: &JsonBounds, json: &[u8]) -> Result<(), TooComplex> {
        let (mut depth, mut values, mut string_len) = (0usize, 0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &c in json {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_string = false;
                    continue;
                }
                string_len += 1;
                if string_len > b.max_string {
                    return Err(TooComplex::String(b.max_string));
                }
                continue;
            }
            match c {
                b'"' => (in_string, string_len) = (true, 0),
                b'{' | b'[' => {
                    depth += 1;
                    if depth > b.max_depth {
                        return Err(TooComplex::Depth(b.max_depth));
                    }
                    values += 1;
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' | b':' => {
                    values += 1;
                    if values > b.max_values {
                        return Err(TooComplex::Values(b.max_values));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    #[test]
    fn escapes_count_both_bytes_and_an_unclosed_string_counts_to_the_end() {
        assert!(B.check(br#"{"k":"123456\""}"#).is_ok());
        assert_eq!(B.check(br#"{"k":"1234567\""}"#), Err(TooComplex::String(8)));
        assert!(B.check(br#"{"k":"1234567\"#).is_ok());
        assert_eq!(B.check(br#"{"k":"123456789"#), Err(TooComplex::String(8)));
        // An escaped quote does not close the string: the brackets after it are inside.
        assert!(B.check(br#"["\"[[[[[["]"#).is_ok());
    }

    proptest::proptest! {
        /// Documents made of the bytes that matter (and some that do not), against the
        /// byte-by-byte scan, with small bounds so every kind of refusal is reached.
        #[test]
        fn agrees_with_the_bytewise_scan(
            json in proptest::collection::vec(
                proptest::sample::select(b"{}[]\":,\\ab1 \xe0".to_vec()),
                0..160,
            ),
            depth in 1usize..6,
            values in 1usize..24,
            string in 0usize..12,
        ) {
            let b = JsonBounds { max_depth: depth, max_values: values, max_string: string };
            proptest::prop_assert_eq!(b.check(&json), bytewise(&b, &json));
        }
    }

    #[test]
    fn the_spec_samples_pass_the_defaults() {
        let api1 = br#"{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","name":"Arindam Ray","mobile":"9350778824","email":"arindam.ray@cmail.com","gender":"male","age":48}"#;
        assert!(JsonBounds::default().check(api1).is_ok());
    }
}
