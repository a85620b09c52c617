//! `aes` layer: AES-256-CBC with PKCS#7 padding and a static per-peer IV, as the BSK spec's
//! Node/Java/PHP samples do it, carried as standard base64.
//!
//! The key is the 32 ASCII bytes of the key string and the IV the 16 ASCII bytes of the IV
//! string (not hex, not derived). CBC without a MAC is malleable and a padding oracle: every
//! way decryption can fail has its own [`AesFailure`] for logs and metrics, but callers must
//! answer all of them identically (see [`super::Failure::Undecryptable`]).
//!
//! ```
//! use bsk_sidecar::envelope::aes::{self, AesKey};
//!
//! let key = AesKey::new(b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W", b"V0ZMZO6WZ45KY2PL").unwrap();
//! let sealed = aes::encrypt(&key, br#"{"ticketNo":20221202153322882}"#);
//! let plain = aes::decrypt(&[key], &sealed, |_| true).unwrap();
//! assert_eq!(plain, br#"{"ticketNo":20221202153322882}"#);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext, UnboundCipherKey, AES_256};
use aws_lc_rs::iv::FixedLength;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use subtle::ConstantTimeEq;

type Encryptor = cbc::Encryptor<aes::Aes256>;

const BLOCK: usize = 16;

/// Base64 characters decoded and then decrypted at a time by [`open_in_pieces`]: 12 KiB
/// of ciphertext (768 blocks), which stays in the core's cache between the two steps.
const PIECE: usize = 16 * 1024;

/// Standard base64 without its `=` padding, which is optional (senders that strip it are
/// common, and some send only part of it). `None` when `=` stands where no byte is missing:
/// only a final group of 2 or 3 characters lacks any.
fn unpadded(b64: &[u8]) -> Option<&[u8]> {
    let data = b64
        .strip_suffix(b"==")
        .or_else(|| b64.strip_suffix(b"="))
        .unwrap_or(b64);
    let padded = data.len() != b64.len();
    (!padded || matches!(data.len() % 4, 2 | 3)).then_some(data)
}

/// Decodes standard base64 with its padding optional: no stray bits after the last byte,
/// no `=` where no byte is missing.
///
/// SIMD, AVX-512 (VBMI) where the CPU has it and AVX2 otherwise (`base64-turbo`):
/// `encData` of a 1 MiB document is 1.4 MB of text, which the scalar decoder took 90% of
/// the time to open, and `base64-simd`'s AVX2 decoder half (BENCHMARKS.md).
fn decode_lenient(b64: &[u8]) -> Option<Vec<u8>> {
    base64_turbo::STANDARD_NO_PAD.decode(unpadded(b64)?).ok()
}

/// Opens `b64` with one key the way [`decrypt`] does, decoding and decrypting a
/// [`PIECE`] at a time: each piece is decrypted while its ciphertext is still in the
/// cache, where decoding all of a 1 MiB document first and decrypting it after took both
/// passes through memory (BENCHMARKS.md). `None` when the text is not clean base64 of a
/// whole number of blocks (a repair or the verdict is [`decrypt`]'s to make); CBC
/// decryption of a piece needs only the last ciphertext block of the piece before.
fn open_in_pieces(key: &AesKey, b64: &[u8]) -> Option<Result<Vec<u8>, AesFailure>> {
    let data = unpadded(b64)?;
    // Exact, from the length alone; an error for a last group of one character.
    let len = base64_simd::STANDARD_NO_PAD.decoded_length(data).ok()?;
    if len == 0 || len % BLOCK != 0 {
        return None;
    }
    // The decoder asks for room for whole groups: up to 2 bytes more than the last
    // piece decodes to.
    let mut buf = Vec::with_capacity(len + 2);
    let mut iv = key.iv;
    // Every piece but the last is a whole number of 4-character groups and of blocks
    // (`PIECE` is a multiple of 64 characters): decoded one after another they are the
    // text decoded whole, and the last piece holds the rest of the blocks.
    for piece in data.chunks(PIECE) {
        let start = buf.len();
        base64_turbo::STANDARD_NO_PAD
            .decode_vec(piece, &mut buf)
            .ok()?;
        let ct = buf.get_mut(start..)?;
        let next_iv = *ct.last_chunk::<BLOCK>()?;
        if cbc_decrypt(key, iv, ct).is_err() {
            return Some(Err(AesFailure::BadPadding));
        }
        iv = next_iv;
    }
    Some(unpad(&mut buf).map(|()| buf))
}

/// AES-256-CBC decryption of whole blocks in place, from `iv`.
fn cbc_decrypt(key: &AesKey, iv: [u8; BLOCK], blocks: &mut [u8]) -> Result<(), AesFailure> {
    let iv = DecryptionContext::Iv128(FixedLength::from(iv));
    key.open
        .decrypt(blocks, iv)
        .map(|_| ())
        .map_err(|_| AesFailure::BadPadding)
}

/// Removes PKCS#7 padding as `cbc` judged it: a last byte from 1 to 16, repeated that
/// many times. The verdict takes the same time whatever the last block holds: it is
/// arithmetic on masks (all ones where a test fails), without a branch on the bytes,
/// and one constant-time comparison at the end (`subtle`'s for every byte cost about a
/// thousand instructions a request).
fn unpad(buf: &mut Vec<u8>) -> Result<(), AesFailure> {
    let last = *buf.last_chunk::<BLOCK>().ok_or(AesFailure::BadPadding)?;
    let [.., n] = last;
    let n16 = u16::from(n);
    // All ones when `a < b` (the difference wraps), for `a` and `b` below 256.
    let below = |a: u16, b: u16| (a.wrapping_sub(b) >> 8) as u8;
    // n = 0 or n > 16.
    let mut bad = below(n16, 1) | below(BLOCK as u16, n16);
    // Byte `i` of the last block, `BLOCK - i` from the end, is padding when that is at
    // most `n`; each must then be `n`.
    for (from_end, byte) in (1..=BLOCK as u16).rev().zip(last) {
        bad |= below(from_end, n16 + 1) & (byte ^ n);
    }
    if !bool::from(bad.ct_eq(&0)) {
        return Err(AesFailure::BadPadding);
    }
    buf.truncate(buf.len() - usize::from(n));
    Ok(())
}

/// One AES-256-CBC key and its static IV. `Debug` never shows either.
///
/// Sealing runs RustCrypto's `aes` and `cbc` (CBC encryption is one block after another
/// whoever implements it). Opening runs AWS-LC's AES-CBC, whose decryption keeps eight
/// blocks in flight: 1.7x the throughput of `cbc`'s on a 1 MiB document
/// (BENCHMARKS.md); its key schedule is made once, here, and erased when dropped. The
/// padding is judged here ([`unpad`]), in constant time.
#[derive(Clone)]
pub struct AesKey {
    key: [u8; 32],
    iv: [u8; 16],
    open: Arc<DecryptingKey>,
}

impl AesKey {
    /// `key` must be exactly 32 bytes and `iv` exactly 16 (for the spec's keys: the ASCII
    /// bytes of the key and IV strings). The error names the lengths, never the content.
    pub fn new(key: &[u8], iv: &[u8]) -> Result<AesKey, String> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| format!("AES-256 key must be 32 bytes, got {}", key.len()))?;
        let iv: [u8; 16] = iv
            .try_into()
            .map_err(|_| format!("AES-CBC IV must be 16 bytes, got {}", iv.len()))?;
        let open = UnboundCipherKey::new(&AES_256, &key)
            .and_then(DecryptingKey::cbc)
            .map_err(|_| "AES-256 key schedule could not be made".to_string())?;
        Ok(AesKey {
            key,
            iv,
            open: Arc::new(open),
        })
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(***)")
    }
}

/// Why one ciphertext could not be opened. For logs and metrics only: every variant must
/// produce the same response to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AesFailure {
    /// Not standard base64 even after the tolerated repairs.
    #[error("not base64")]
    BadBase64,
    /// The ciphertext is empty or not a whole number of 16-byte blocks.
    #[error("ciphertext length is not a non-zero multiple of 16")]
    BadLength,
    /// No key produced valid PKCS#7 padding (also: no key configured).
    #[error("bad padding")]
    BadPadding,
    /// A key unpadded cleanly but the plaintext is not UTF-8.
    #[error("plaintext is not UTF-8")]
    NotUtf8,
    /// A key produced UTF-8 that the caller's acceptance check refused (not JSON, or not
    /// a token when a `jwt` layer follows).
    #[error("plaintext not accepted")]
    NotAccepted,
}

impl AesFailure {
    /// Short snake_case label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            AesFailure::BadBase64 => "bad_base64",
            AesFailure::BadLength => "bad_length",
            AesFailure::BadPadding => "bad_padding",
            AesFailure::NotUtf8 => "not_utf8",
            AesFailure::NotAccepted => "not_accepted",
        }
    }

    /// How far decryption got; with several keys the furthest failure is reported.
    fn depth(self) -> u8 {
        match self {
            AesFailure::BadBase64 => 0,
            AesFailure::BadLength => 1,
            AesFailure::BadPadding => 2,
            AesFailure::NotUtf8 => 3,
            AesFailure::NotAccepted => 4,
        }
    }
}

/// Encrypts `plain` and returns standard base64 with `=` padding (what PHP `openssl_encrypt`,
/// Node `toString('base64')` and commons-codec produce).
pub fn encrypt(key: &AesKey, plain: &[u8]) -> String {
    STANDARD.encode(encrypt_raw(key, plain))
}

/// Decrypts base64 `b64` with each key in turn (rotation: current key first) and returns the
/// first plaintext that unpads, is UTF-8 and satisfies `accept`.
///
/// Tolerated on input: CR, LF and TAB anywhere (MIME line breaks), spaces standing for `+`
/// (an unencoded `+` in a form body decodes to a space), and missing `=` padding.
pub fn decrypt(
    keys: &[AesKey],
    b64: &str,
    accept: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, AesFailure> {
    // SIMD UTF-8 validation (`simdutf8`): the standard library's check was a tenth of the
    // time to open a 1 MiB document.
    let judge = |plain: &[u8]| match simdutf8::basic::from_utf8(plain) {
        Err(_) => Err(AesFailure::NotUtf8),
        Ok(_) if !accept(plain) => Err(AesFailure::NotAccepted),
        Ok(_) => Ok(()),
    };
    // One key (no rotation under way) and clean base64: decoded and decrypted in pieces.
    if let [key] = keys {
        if let Some(opened) = open_in_pieces(key, b64.as_bytes()) {
            return opened.and_then(|p| judge(&p).map(|()| p));
        }
    }
    // What transports do to base64 (line breaks, `+` turned into a space) is repaired only
    // when the text does not decode as sent: a clean document is read once, not twice
    // (the scan for those characters took half the time of opening 1 MiB). Either way
    // the verdict is the repaired text's: base64 has no whitespace in its alphabet.
    let decoded = match decode_lenient(b64.as_bytes()) {
        Some(ct) => Some(ct),
        None => match repair_base64(b64) {
            Cow::Owned(repaired) => decode_lenient(repaired.as_bytes()),
            Cow::Borrowed(_) => None,
        },
    };
    let mut ct = decoded.ok_or(AesFailure::BadBase64)?;
    if ct.is_empty() || ct.len() % BLOCK != 0 {
        return Err(AesFailure::BadLength);
    }
    let mut furthest = AesFailure::BadPadding;
    for (i, key) in keys.iter().enumerate() {
        // Every key but the last decrypts a copy; the last (the only one, unless a
        // rotation is under way) decrypts the decoded buffer in place: one allocation per
        // document.
        let plain = if i + 1 == keys.len() {
            decrypt_in_place(key, &mut ct).map(|()| std::mem::take(&mut ct))
        } else {
            decrypt_raw(key, &ct)
        };
        match plain.and_then(|p| judge(&p).map(|()| p)) {
            Ok(p) => return Ok(p),
            Err(f) if f.depth() > furthest.depth() => furthest = f,
            Err(_) => {}
        }
    }
    Err(furthest)
}

/// [`decrypt_raw`] on `buf` itself: on success `buf` holds the plaintext. `buf` is a
/// non-empty whole number of blocks (the callers check).
fn decrypt_in_place(key: &AesKey, buf: &mut Vec<u8>) -> Result<(), AesFailure> {
    cbc_decrypt(key, key.iv, buf)?;
    unpad(buf)
}

/// AES-256-CBC encryption with PKCS#7 padding, no encoding.
pub fn encrypt_raw(key: &AesKey, plain: &[u8]) -> Vec<u8> {
    Encryptor::new(&key.key.into(), &key.iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plain)
}

/// AES-256-CBC decryption with PKCS#7 unpadding, no encoding and no content checks.
pub fn decrypt_raw(key: &AesKey, ct: &[u8]) -> Result<Vec<u8>, AesFailure> {
    if ct.is_empty() || ct.len() % BLOCK != 0 {
        return Err(AesFailure::BadLength);
    }
    // A copy decrypted in place: `decrypt_padded_vec_mut` allocates zeroed memory, which
    // for a large document means fresh pages and a page fault per 4 KiB (BENCHMARKS.md).
    let mut buf = ct.to_vec();
    decrypt_in_place(key, &mut buf)?;
    Ok(buf)
}

/// Undoes what transports do to base64: drops CR/LF/TAB, turns spaces back into `+`.
fn repair_base64(b64: &str) -> Cow<'_, str> {
    if !b64
        .bytes()
        .any(|b| matches!(b, b'\r' | b'\n' | b'\t' | b' '))
    {
        return Cow::Borrowed(b64);
    }
    Cow::Owned(
        b64.chars()
            .filter(|c| !matches!(c, '\r' | '\n' | '\t'))
            .map(|c| if c == ' ' { '+' } else { c })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::alphabet;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use proptest::prelude::*;

    /// The scalar decoder `decode_lenient` replaced: what it accepted is what senders rely on.
    const SCALAR: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    fn same_as_scalar(text: &[u8]) {
        assert_eq!(
            decode_lenient(text),
            SCALAR.decode(text).ok(),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn padding_is_optional_even_in_part_and_stray_bits_are_refused() {
        for text in [
            "", "QQ==", "QQ", "QQ=", "QUI=", "QUI", "QUJD", "QUJD====", "QR==", "QUJ=", "====",
            "QQ==QQ==", "Q", "QUJDRA", "QUJDRA=", "QUJDRA==", "QUJ D", "QU\nJD", "QUJD-_",
        ] {
            same_as_scalar(text.as_bytes());
        }
        assert_eq!(decode_lenient(b"QQ").as_deref(), Some(&b"A"[..]));
        assert_eq!(decode_lenient(b"QQ==").as_deref(), Some(&b"A"[..]));
        assert_eq!(
            decode_lenient(b"QR=="),
            None,
            "stray bits after the last byte"
        );
        assert_eq!(
            decode_lenient(b"QQ=").as_deref(),
            Some(&b"A"[..]),
            "partial padding"
        );
    }

    proptest! {
        /// Encodings of any bytes, with and without their padding, and any text over the
        /// alphabet with `=` and a few bytes outside it: both decoders agree on each.
        #[test]
        fn agrees_with_the_scalar_decoder(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            strip in any::<bool>(),
            noise in proptest::collection::vec(
                prop_oneof![
                    Just(b'A'), Just(b'Q'), Just(b'z'), Just(b'0'), Just(b'+'), Just(b'/'),
                    Just(b'='), Just(b'-'), Just(b'_'), Just(b' '), Just(0xc3u8), any::<u8>()
                ],
                0..40,
            ),
        ) {
            let mut text = STANDARD.encode(&bytes);
            if strip {
                text = text.trim_end_matches('=').to_string();
            }
            same_as_scalar(text.as_bytes());
            prop_assert_eq!(decode_lenient(text.as_bytes()), Some(bytes));
            same_as_scalar(&noise);
        }

        /// Long encodings, which the vector kernels decode 32 or 64 characters at a time,
        /// with one character replaced anywhere: both decoders agree, and each piece of
        /// [`open_in_pieces`] is decoded by the same kernel.
        #[test]
        fn agrees_with_the_scalar_decoder_on_long_text(
            bytes in proptest::collection::vec(any::<u8>(), 48..3000),
            at in any::<proptest::sample::Index>(),
            with in prop_oneof![
                Just(b'A'), Just(b'+'), Just(b'/'), Just(b'='), Just(b'-'), Just(b'_'),
                Just(b' '), Just(b'\n'), Just(0u8), Just(0x80u8), Just(0xffu8), any::<u8>()
            ],
        ) {
            let mut text = STANDARD.encode(&bytes).into_bytes();
            same_as_scalar(&text);
            let i = at.index(text.len());
            if let Some(c) = text.get_mut(i) {
                *c = with;
            }
            same_as_scalar(&text);
        }
    }

    /// RustCrypto's `cbc`, which opened documents before AWS-LC did: the verdict on a
    /// whole number of blocks, the plaintext or bad padding.
    fn opened_by_cbc(key: &[u8; 32], iv: &[u8; 16], ct: &[u8]) -> Option<Vec<u8>> {
        use cbc::cipher::BlockDecryptMut;
        let mut buf = ct.to_vec();
        let n = cbc::Decryptor::<aes::Aes256>::new(key.into(), iv.into())
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }

    /// Blocks whose last one ends in `run` bytes of `value`, sealed without padding: once
    /// opened, a padding that is valid or broken in every way there is.
    fn sealed_blocks(
        key: &[u8; 32],
        iv: &[u8; 16],
        mut blocks: Vec<u8>,
        run: usize,
        value: u8,
    ) -> Vec<u8> {
        use cbc::cipher::block_padding::NoPadding;
        let len = blocks.len();
        for b in blocks.iter_mut().skip(len.saturating_sub(run)) {
            *b = value;
        }
        Encryptor::new(key.into(), iv.into()).encrypt_padded_vec_mut::<NoPadding>(&blocks)
    }

    proptest! {
        /// Opening agrees with `cbc` on sealed documents, on blocks whose padding is valid
        /// or broken, and on random blocks.
        #[test]
        fn opening_agrees_with_the_cbc_crate(
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 16]>(),
            plain in proptest::collection::vec(any::<u8>(), 0..300),
            blocks in (1..20usize).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * BLOCK)),
            run in 0..=BLOCK,
            value in prop_oneof![0..=17u8, any::<u8>()],
        ) {
            let k = AesKey::new(&key, &iv).unwrap();
            let sealed = encrypt_raw(&k, &plain);
            prop_assert_eq!(decrypt_raw(&k, &sealed).ok(), Some(plain));
            let padded = sealed_blocks(&key, &iv, blocks.clone(), run, value);
            prop_assert_eq!(decrypt_raw(&k, &padded).ok(), opened_by_cbc(&key, &iv, &padded));
            prop_assert_eq!(decrypt_raw(&k, &blocks).ok(), opened_by_cbc(&key, &iv, &blocks));
        }
    }

    /// Documents around the pieces' bounds (12 KiB of ciphertext each), sent with and
    /// without `=` padding: opened in pieces, each is what decoding it whole and
    /// decrypting it after gives; broken padding, a bad character in a later piece and a
    /// length that is not whole blocks get the same verdicts as before.
    #[test]
    fn opening_in_pieces_is_opening_whole() {
        let k = AesKey::new(&[3u8; 32], &[5u8; 16]).unwrap();
        let piece_ct = PIECE / 4 * 3;
        for len in [
            0,
            1,
            piece_ct - 17,
            piece_ct - 1,
            piece_ct,
            piece_ct + 15,
            piece_ct + 16,
            2 * piece_ct - 1,
            3 * piece_ct + 100,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let ct = encrypt_raw(&k, &plain);
            let b64 = STANDARD.encode(&ct);
            let stripped = b64.trim_end_matches('=');
            for text in [b64.as_str(), stripped] {
                let opened = open_in_pieces(&k, text.as_bytes());
                assert_eq!(opened, Some(Ok(plain.clone())), "{len} bytes");
                assert_eq!(
                    decrypt(std::slice::from_ref(&k), text, |_| true),
                    Ok(plain.clone())
                );
            }
            // The same blocks with the last one's padding broken.
            let mut broken = ct.clone();
            if let Some(last) = broken.last_mut() {
                *last = 0;
            }
            let text = STANDARD.encode(&broken);
            assert_eq!(
                open_in_pieces(&k, text.as_bytes()),
                Some(Err(AesFailure::BadPadding))
            );
            assert_eq!(
                decrypt(std::slice::from_ref(&k), &text, |_| true),
                decrypt_raw(&k, &broken)
            );
        }
        let ct = encrypt_raw(&k, &vec![b'x'; 2 * piece_ct]);
        let mut text = STANDARD.encode(&ct).into_bytes();
        if let Some(c) = text.get_mut(PIECE + 5) {
            *c = b'*';
        }
        // Left to the general path, which gives the verdict it gave before.
        let left_whole = |text: &str, verdict| {
            assert_eq!(open_in_pieces(&k, text.as_bytes()), None, "{verdict:?}");
            assert_eq!(
                decrypt(std::slice::from_ref(&k), text, |_| true),
                Err(verdict)
            );
        };
        left_whole(&String::from_utf8(text).unwrap(), AesFailure::BadBase64);
        left_whole(&STANDARD.encode(&ct[..ct.len() - 1]), AesFailure::BadLength);
        left_whole("QUJD=", AesFailure::BadBase64);
    }

    #[test]
    fn a_padding_is_one_to_sixteen_bytes_all_alike() {
        let (key, iv) = ([7u8; 32], [9u8; 16]);
        let k = AesKey::new(&key, &iv).unwrap();
        let opened =
            |run, value| decrypt_raw(&k, &sealed_blocks(&key, &iv, vec![0x41; 32], run, value));
        assert_eq!(opened(1, 1).unwrap().len(), 31);
        assert_eq!(opened(16, 16).unwrap().len(), 16);
        assert_eq!(opened(3, 3).unwrap().len(), 29);
        assert_eq!(opened(1, 0), Err(AesFailure::BadPadding));
        assert_eq!(opened(16, 17), Err(AesFailure::BadPadding));
        assert_eq!(
            opened(2, 3),
            Err(AesFailure::BadPadding),
            "fewer bytes than the value"
        );
        assert_eq!(opened(0, 0), Err(AesFailure::BadPadding));
    }
}
