//! Structural bounds on the opened JSON — nesting depth, number of values, string
//! length — checked on every route before anything parses the document into a tree,
//! so a JSON bomb is refused before it costs memory (in the sidecar or the application).
//!
//! The scan is a single pass over bytes already known to be JSON.
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
        let mut depth = 0usize;
        let mut values = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        let mut string_len = 0usize;
        for &b in json {
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                    continue;
                }
                string_len += 1;
                if string_len > self.max_string {
                    return Err(TooComplex::String(self.max_string));
                }
                continue;
            }
            match b {
                b'"' => {
                    in_string = true;
                    string_len = 0;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > self.max_depth {
                        return Err(TooComplex::Depth(self.max_depth));
                    }
                    values += 1;
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                // Every separator starts one more member or element.
                b',' | b':' => {
                    values += 1;
                    if values > self.max_values {
                        return Err(TooComplex::Values(self.max_values));
                    }
                }
                _ => {}
            }
        }
        Ok(())
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

    #[test]
    fn the_spec_samples_pass_the_defaults() {
        let api1 = br#"{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","name":"Arindam Ray","mobile":"9350778824","email":"arindam.ray@cmail.com","gender":"male","age":48}"#;
        assert!(JsonBounds::default().check(api1).is_ok());
    }
}
