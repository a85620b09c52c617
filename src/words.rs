//! Text looked at eight bytes at a time, as one `u64` (the first byte the lowest): the
//! digit, field-value and hex work each request does on short texts — a token's dates, its
//! ids, the request id, the fields the sidecar writes — without a loop over every byte.
//!
//! Each test marks the bytes it looks for by a bit of their own byte, with no carry or
//! borrow from one byte into the next unless the function says so.

/// Every byte in a word.
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
/// Each byte's high bit.
pub(crate) const HIGHS: u64 = 0x8080_8080_8080_8080;
/// Eight ASCII zeros.
const ZEROS: u64 = ONES * 0x30;

/// The bytes of `word` that are not ASCII digits, each marked by a bit of its own byte;
/// bytes past the first marked may be marked wrongly, never the first one. So the word is
/// all digits exactly when nothing is marked.
pub(crate) fn digit_stops(word: u64) -> u64 {
    let high = (word & (ONES * 0xf0)) ^ ZEROS;
    let low = (word.wrapping_add(ONES * 0x06) & (ONES * 0xf0)) ^ ZEROS;
    high | low
}

/// The bytes of `word` that are zero, each marked by its high bit, exactly (no borrow).
fn zeros(word: u64) -> u64 {
    !(((word & !HIGHS) + !HIGHS) | word) & HIGHS
}

/// The bytes of `word` no field value may hold (RFC 9110 §5.5): controls other than tab,
/// and DEL. Each marked by its high bit, exactly.
fn field_stops(word: u64) -> u64 {
    let control = within(word, 0, 0x1f);
    let tab = zeros(word ^ (ONES * u64::from(b'\t')));
    let del = zeros(word ^ (ONES * 0x7f));
    (control & !tab) | del
}

/// Whether every word of `bytes` passes `clean` (no mark), the last one read where the
/// text ends (overlapping the one before it, which a test of each byte allows); bytes by
/// `byte` when there are fewer than eight.
fn every_word(bytes: &[u8], clean: impl Fn(u64) -> bool, byte: impl Fn(u8) -> bool) -> bool {
    let Some(last) = bytes.last_chunk::<8>() else {
        return bytes.iter().all(|&b| byte(b));
    };
    let word = |w: &[u8]| w.first_chunk::<8>().map(|w| u64::from_le_bytes(*w));
    bytes.chunks_exact(8).all(|w| word(w).is_some_and(&clean)) && clean(u64::from_le_bytes(*last))
}

/// Whether `bytes` holds ASCII digits alone (true when it is empty).
pub(crate) fn all_digits(bytes: &[u8]) -> bool {
    every_word(bytes, |w| digit_stops(w) == 0, |b| b.is_ascii_digit())
}

/// Whether `bytes` is ASCII (`<[u8]>::is_ascii`, with no loop over a short text's tail).
pub(crate) fn ascii(bytes: &[u8]) -> bool {
    every_word(bytes, |w| w & HIGHS == 0, |b| b.is_ascii())
}

/// Whether every byte of `value` may appear in a field value (RFC 9110 §5.5: visible
/// characters, space, tab and obs-text; no CR, LF, NUL, DEL or other controls).
pub(crate) fn field_value(value: &[u8]) -> bool {
    every_word(
        value,
        |w| field_stops(w) == 0,
        |b| b == b'\t' || (b >= 0x20 && b != 0x7f),
    )
}

/// The bytes of `word` a string needs escaped between quotes, each marked by its high
/// bit, exactly: `"`, `\` and the controls below 0x20, and when `ascii` also DEL and
/// every byte past ASCII.
fn quote_stops(word: u64, ascii: bool) -> u64 {
    let quote = zeros(word ^ (ONES * u64::from(b'"')));
    let backslash = zeros(word ^ (ONES * u64::from(b'\\')));
    let marks = within(word, 0, 0x1f) | quote | backslash;
    match ascii {
        true => marks | zeros(word ^ (ONES * 0x7f)) | (word & HIGHS),
        false => marks,
    }
}

/// Whether `{:?}` writes `bytes` between its quotes unchanged: printable ASCII with no
/// `"` or `\` (a log line's quoted value).
pub(crate) fn quotable(bytes: &[u8]) -> bool {
    let byte = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    every_word(bytes, |w| quote_stops(w, true) == 0, byte)
}

/// Whether a JSON string holds `bytes` unescaped: no `"`, `\` or control below 0x20.
pub(crate) fn json_plain(bytes: &[u8]) -> bool {
    let byte = |b: u8| b >= 0x20 && b != b'"' && b != b'\\';
    every_word(bytes, |w| quote_stops(w, false) == 0, byte)
}

/// The bytes of `word` from `lo` to `hi` (both ASCII), each marked by its high bit,
/// exactly: a byte's low seven bits are carried into its high bit from `lo` on and again
/// past `hi`, and no sum leaves its byte.
fn within(word: u64, lo: u8, hi: u8) -> u64 {
    let seven = word & !HIGHS;
    let from_lo = seven + ONES * (0x80 - u64::from(lo));
    let past_hi = seven + ONES * (0x7f - u64::from(hi));
    from_lo & !past_hi & !word & HIGHS
}

/// The bytes of `lower` that are lower-case ASCII letters, each marked by its fifth bit
/// (the one case flips).
fn letters(lower: u64) -> u64 {
    within(lower, b'a', b'z') >> 2
}

/// The bytes of `word` that are upper-case ASCII letters, each marked by its fifth bit.
fn capitals(word: u64) -> u64 {
    within(word, b'A', b'Z') >> 2
}

/// Whether `text` is `lower` in any ASCII case, `lower` written in lower case (a field
/// name, a token): `text.eq_ignore_ascii_case(lower)`, eight bytes at a time.
#[inline]
pub(crate) fn same_name(text: &[u8], lower: &[u8]) -> bool {
    // Most names asked about are of another length: told apart where the call is.
    text.len() == lower.len() && same_length_name(text, lower)
}

/// [`same_name`] for texts of the same length.
#[inline]
fn same_length_name(text: &[u8], lower: &[u8]) -> bool {
    let same = |t: &[u8; 8], l: &[u8; 8]| {
        let (t, l) = (u64::from_le_bytes(*t), u64::from_le_bytes(*l));
        // Bytes may differ in the bit case flips, where `lower` has a letter, alone.
        (t ^ l) & !letters(l) == 0
    };
    match (text.last_chunk::<8>(), lower.last_chunk::<8>()) {
        (Some(t_last), Some(l_last)) => {
            let mut firsts = text.chunks_exact(8).zip(lower.chunks_exact(8));
            firsts.all(|(t, l)| match (t.first_chunk(), l.first_chunk()) {
                (Some(t), Some(l)) => same(t, l),
                _ => false,
            }) && same(t_last, l_last)
        }
        _ => text.eq_ignore_ascii_case(lower),
    }
}

/// `bytes` in ASCII lower case, in place (`make_ascii_lowercase`), eight at a time.
pub(crate) fn lower_ascii(bytes: &mut [u8]) {
    let lower = |w: &mut [u8; 8]| {
        let word = u64::from_le_bytes(*w);
        *w = (word | capitals(word)).to_le_bytes();
    };
    if bytes.len() < 8 {
        bytes.make_ascii_lowercase();
        return;
    }
    for w in bytes.chunks_exact_mut(8) {
        if let Some(w) = w.first_chunk_mut::<8>() {
            lower(w);
        }
    }
    if let Some(last) = bytes.last_chunk_mut::<8>() {
        lower(last);
    }
}

/// The number eight ASCII digits write, the first the most significant (the caller has
/// checked they are digits).
fn eight_digits(word: u64) -> u64 {
    // Each pair of digits, then each four, then all eight.
    let pairs = word.wrapping_sub(ZEROS);
    let pairs = pairs.wrapping_mul(10).wrapping_add(pairs >> 8);
    let low = (pairs & 0x0000_00ff_0000_00ff).wrapping_mul(100 + (1_000_000 << 32));
    let high = ((pairs >> 16) & 0x0000_00ff_0000_00ff).wrapping_mul(1 + (10_000 << 32));
    low.wrapping_add(high) >> 32
}

/// Powers of ten up to the eighth.
const TENS: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// The number `text` writes when it is 1 to 16 ASCII digits (leading zeros allowed);
/// `None` for any other text.
pub(crate) fn digits_value(text: &[u8]) -> Option<u64> {
    match (text.first_chunk::<8>(), text.last_chunk::<8>()) {
        (Some(first), Some(last)) if text.len() <= 16 => {
            // The digits past the first eight are the last word's top bytes; its other
            // bytes (the first word's too) are read as zeros.
            let shared = 16 - text.len();
            let mine = u64::MAX.checked_shl(8 * shared as u32).unwrap_or(0);
            let first = u64::from_le_bytes(*first);
            let last = (u64::from_le_bytes(*last) & mine) | (ZEROS & !mine);
            if digit_stops(first) | digit_stops(last) != 0 {
                return None;
            }
            let scale = TENS.get(text.len() - 8)?;
            Some(eight_digits(first) * scale + eight_digits(last))
        }
        (None, _) if !text.is_empty() && all_digits(text) => {
            Some(text.iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')))
        }
        _ => None,
    }
}

/// `v` as eight lower-case hex digits, the most significant first.
pub(crate) fn hex_digits(v: u32) -> [u8; 8] {
    // Each nibble into a byte of its own, the lowest nibble in the lowest byte.
    let spread = u64::from(v);
    let spread = (spread | (spread << 16)) & 0x0000_ffff_0000_ffff;
    let spread = (spread | (spread << 8)) & 0x00ff_00ff_00ff_00ff;
    let spread = (spread | (spread << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // `0`–`9` from 0x30, `a`–`f` 39 further on: a nibble of ten or more carries 6 into
    // its fifth bit.
    let letters = ((spread + ONES * 6) >> 4) & ONES;
    (spread + ZEROS + letters * 39).swap_bytes().to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value at every place of texts of each length to 20, among digits or
    /// among valid field bytes (ASCII letters): each test agrees with a test of each byte.
    #[test]
    fn a_text_passes_exactly_when_each_of_its_bytes_does() {
        let field_byte = |b: u8| b == b'\t' || (b >= 0x20 && b != 0x7f);
        let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        let quoted_byte = |b: u8| !escaped(b) && b < 0x7f;
        for len in 0..=20usize {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut digits = vec![b'7'; len];
                    let mut value = vec![b'a'; len];
                    if let (Some(d), Some(v)) = (digits.get_mut(at), value.get_mut(at)) {
                        *d = b;
                        *v = b;
                    }
                    assert_eq!(all_digits(&digits), b.is_ascii_digit(), "{len} {at} {b}");
                    assert_eq!(ascii(&value), b.is_ascii(), "{len} {at} {b}");
                    assert_eq!(field_value(&value), field_byte(b), "{len} {at} {b}");
                    assert_eq!(quotable(&value), quoted_byte(b), "{len} {at} {b}");
                    assert_eq!(json_plain(&value), !escaped(b), "{len} {at} {b}");
                }
            }
            assert!(all_digits(&vec![b'0'; len]));
            assert!(field_value(&vec![b'\t'; len]));
        }
        // A tab beside a control, and controls after tabs.
        assert!(!field_value(b"\t\x1f\t\t\t\t\t\t\t"));
        assert!(!field_value(b"\t\t\t\t\t\t\t\t\x00"));
        assert!(field_value("αβγδ visible \u{80}".as_bytes()));
    }

    /// Every length from 1 to 16, at each power of ten and one below it and other values,
    /// with leading zeros: read as `u64`'s parser reads them. A non-digit anywhere, an
    /// empty text and more than sixteen digits are not numbers here.
    #[test]
    fn digits_are_read_as_the_parser_reads_them() {
        let mut texts: Vec<String> = vec!["0".into(), "00000000".into(), "0000000000000001".into()];
        for len in 1..=16u32 {
            let power = 10u64.pow(len - 1);
            for n in [power, power * 10 - 1, power * 7 + 3, power + 1] {
                texts.push(n.to_string());
            }
            texts.push(format!("{:0>w$}", 42, w = len as usize));
        }
        texts.push("1700000000".into());
        texts.push("9876543210123456".into());
        for text in &texts {
            assert_eq!(
                digits_value(text.as_bytes()),
                text.parse::<u64>().ok(),
                "{text}"
            );
        }
        for len in 1..=16usize {
            for at in 0..len {
                for bad in [b'/', b':', b' ', b'a', 0, 0xff, b'.', b'-'] {
                    let mut text = vec![b'5'; len];
                    if let Some(b) = text.get_mut(at) {
                        *b = bad;
                    }
                    assert_eq!(digits_value(&text), None, "{len} {at} {bad}");
                }
            }
        }
        assert_eq!(digits_value(b""), None);
        assert_eq!(digits_value(b"12345678901234567"), None);
    }

    /// Names of each length to 20 against each byte value at each place, in both cases
    /// and with a byte off by the case bit: the same answers as `eq_ignore_ascii_case`;
    /// lowering agrees with `make_ascii_lowercase` for every byte at every place.
    #[test]
    fn names_compare_and_lower_as_the_standard_library_does() {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_.~";
        for len in 0..=20usize {
            let lower: Vec<u8> = (0..len)
                .map(|i| {
                    alphabet
                        .get(i * 7 % alphabet.len())
                        .copied()
                        .unwrap_or(b'a')
                })
                .collect();
            assert!(same_name(&lower, &lower));
            assert!(same_name(&lower.to_ascii_uppercase(), &lower));
            assert!(!same_name(&lower, &[lower.as_slice(), b"x"].concat()));
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut text = lower.clone();
                    if let Some(t) = text.get_mut(at) {
                        *t = b;
                    }
                    assert_eq!(
                        same_name(&text, &lower),
                        text.eq_ignore_ascii_case(&lower),
                        "{len} {at} {b}"
                    );
                    let mut lowered = text.to_ascii_uppercase();
                    if let Some(t) = lowered.get_mut(at) {
                        *t = b;
                    }
                    let mut expected = lowered.clone();
                    expected.make_ascii_lowercase();
                    lower_ascii(&mut lowered);
                    assert_eq!(lowered, expected, "{len} {at} {b}");
                }
            }
        }
        for (text, lower) in [
            ("Content-Length", "content-length"),
            ("TRANSFER-ENCODING", "transfer-encoding"),
            ("Connection", "connection"),
            ("X-Request-Id", "x-request-id"),
        ] {
            assert!(same_name(text.as_bytes(), lower.as_bytes()), "{text}");
        }
        // Bytes that differ by the case bit alone but are not letters.
        assert!(!same_name(b"[onnection-xyz", b"{onnection-xyz"));
        assert!(!same_name(b"content\x0dlength", b"content-length"));
        assert!(!same_name(b"x-request@id", b"x-request`id"));
    }

    #[test]
    fn hex_digits_are_formatted_hex() {
        let mut values = vec![0, 1, 9, 10, 15, 16, 0xabcdef01, 0x1234_5678, u32::MAX];
        values.extend((0..32).map(|s| 1u32 << s));
        values.extend((0..32).map(|s| (1u32 << s).wrapping_mul(0x9e37_79b9)));
        for v in values {
            assert_eq!(
                hex_digits(v).as_slice(),
                format!("{v:08x}").as_bytes(),
                "{v:#x}"
            );
        }
    }
}
