//! A compact, lossless binary encoding for what a pending event keeps:
//! unsigned varints (LEB128), length-prefixed bytes and strings, and f64s
//! that take the bytes their shortest decimal needs.
//!
//! A pending event lives in Redis for its whole reward window (24 h for a
//! notification), so its bytes are the store's capacity: at d = 32, a
//! feature vector as raw f64s is 256 bytes, while the numbers a caller
//! sends (`0.1234`, `1`, `-2.5`) need 2–4 bytes each. Every value decodes
//! to the exact bits it was encoded from (the shortest round-trip decimal
//! of an f64 parses back to that f64, and values whose decimal would not be
//! shorter are kept raw), so what a model learns from is exactly what the
//! decision saw.
//!
//! f64 layout: one header byte, then
//! - `0`: +0.0 (nothing follows);
//! - `1`: the raw little-endian 8 bytes follow (`-0.0`, values whose
//!   decimal mantissa would not be shorter, exponents outside ±63);
//! - `2..=255`: `h - 2 = (e + 63) << 1 | sign`, then the decimal mantissa
//!   `m` as a varint: the value is `(-1)^sign · m · 10^e`.

use std::fmt::Write as _;

/// A value that could not be decoded (truncated or malformed bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compact encoding: {0}")]
pub struct CodecError(pub &'static str);

/// Appends compact values to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            out: Vec::with_capacity(capacity),
        }
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// An unsigned LEB128 varint (1 byte below 128, at most 10).
    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
        self
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.varint(b.len() as u64);
        self.out.extend_from_slice(b);
        self
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// An f64, exactly (see the module doc for the layout).
    pub fn f64(&mut self, v: f64) -> &mut Self {
        if v == 0.0 && v.is_sign_positive() {
            return self.u8(0);
        }
        match decimal(v) {
            Some((negative, m, e)) if varint_len(m) < 8 => {
                self.u8(2 + ((((e + 63) as u8) << 1) | u8::from(negative)));
                self.varint(m)
            }
            _ => {
                self.u8(1);
                self.out.extend_from_slice(&v.to_le_bytes());
                self
            }
        }
    }

    /// A length-prefixed vector of f64s.
    pub fn vector(&mut self, x: &[f64]) -> &mut Self {
        self.varint(x.len() as u64);
        for &v in x {
            self.f64(v);
        }
        self
    }
}

/// The vector alone, as [`Writer::vector`] writes it.
pub fn encode_vector(x: &[f64]) -> Vec<u8> {
    let mut w = Writer::with_capacity(1 + x.len() * 4);
    w.vector(x);
    w.into_bytes()
}

/// Encodes a slot's payload: its feature vector, then (when not empty) the
/// numbers learning carries along unchanged (see
/// [`crate::store::Slot::aux`]).
pub fn encode_payload(x: &[f64], aux: &[f64]) -> Vec<u8> {
    let mut w = Writer::with_capacity(2 + (x.len() + aux.len()) * 4);
    w.vector(x);
    if !aux.is_empty() {
        w.vector(aux);
    }
    w.into_bytes()
}

/// Decodes [`encode_payload`] (or [`encode_vector`]) output: the vector
/// and the aux numbers (empty when absent); every byte must be used.
pub fn decode_payload(bytes: &[u8]) -> Result<(Vec<f64>, Vec<f64>), CodecError> {
    let mut r = Reader::new(bytes);
    let x = r.vector()?;
    let aux = if r.rest.is_empty() {
        Vec::new()
    } else {
        r.vector()?
    };
    r.finish()?;
    Ok((x, aux))
}

/// Decodes [`encode_vector`] output (every byte must be used).
pub fn decode_vector(bytes: &[u8]) -> Result<Vec<f64>, CodecError> {
    let mut r = Reader::new(bytes);
    let x = r.vector()?;
    r.finish()?;
    Ok(x)
}

/// 10^0 ..= 10^22: every one is exact in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `v` as `(negative, m, e)` with `|v| = m · 10^e`, from its shortest
/// round-trip decimal; `None` when `e` falls outside ±63 or `v` is not
/// finite.
fn decimal(v: f64) -> Option<(bool, u64, i32)> {
    if !v.is_finite() {
        return None;
    }
    let negative = v.is_sign_negative();
    let a = v.abs();
    // Whole numbers (counts, one-hots, the bias) need no formatting.
    if a.fract() == 0.0 && a < 1e15 {
        let (mut m, mut e) = (a as u64, 0);
        while m != 0 && m.is_multiple_of(10) {
            m /= 10;
            e += 1;
        }
        return Some((negative, m, e));
    }
    // Most features are short decimals ("0.1234"): find the fewest
    // fractional digits k whose m = round(a · 10^k) the reader's own
    // computation (m / 10^k, see `Reader::f64`) turns back into `a`. That
    // is the shortest round-trip decimal, found in a few multiplications.
    for (k, &p) in POW10.iter().enumerate().take(10).skip(1) {
        let t = a * p;
        if t >= 9_007_199_254_740_992.0 {
            break;
        }
        let m = t.round();
        if m / p == a {
            return Some((negative, m as u64, -(k as i32)));
        }
    }
    // Ryū's output is the shortest decimal that parses back to the same
    // f64 (Adams 2018, "Ryū: fast float-to-string conversion"), as `{:e}`
    // is, at a fraction of `core::fmt`'s cost: "0.1234", "1.5e-7", "1e16".
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(a);
    let (digits, exp) = match text.split_once('e') {
        Some((d, e)) => (d, e.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let mut m: u64 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        m = m.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    let mut e = exp - frac.len() as i32;
    // "1234.0" and "0.5" carry zeros that are not significant.
    while m != 0 && m.is_multiple_of(10) {
        m /= 10;
        e += 1;
    }
    (-63..=63).contains(&e).then_some((negative, m, e))
}

fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// Reads compact values from a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
    scratch: String,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            scratch: String::new(),
        }
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError("trailing bytes"))
        }
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self.rest.split_first().ok_or(CodecError("truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    /// An unsigned LEB128 varint.
    pub fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or(CodecError("varint overflow"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError("varint too long"))
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = usize::try_from(self.varint()?).map_err(|_| CodecError("length"))?;
        if n > self.rest.len() {
            return Err(CodecError("truncated"));
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(b)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| CodecError("not UTF-8"))
    }

    /// An f64 written by [`Writer::f64`].
    pub fn f64(&mut self) -> Result<f64, CodecError> {
        match self.u8()? {
            0 => Ok(0.0),
            1 => {
                if self.rest.len() < 8 {
                    return Err(CodecError("truncated"));
                }
                let (b, rest) = self.rest.split_at(8);
                self.rest = rest;
                Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            h => {
                let h = h - 2;
                let e = i32::from(h >> 1) - 63;
                let m = self.varint()?;
                let a = if e >= 0 && m < (1 << 53) && e <= 22 {
                    // Exact in f64: m and 10^e both are, and so is their
                    // product whenever it is below 2^53 (checked below).
                    let p = m as f64 * 10f64.powi(e);
                    if p < 9_007_199_254_740_992.0 {
                        p
                    } else {
                        self.parse(m, e)?
                    }
                } else if m < (1 << 53) && (-22..0).contains(&e) {
                    // Clinger's fast path (Clinger 1990, "How to read
                    // floating point numbers accurately"): m and 10^-e are
                    // exact, and one IEEE division rounds correctly.
                    m as f64 / POW10[(-e) as usize]
                } else {
                    self.parse(m, e)?
                };
                Ok(if h & 1 == 1 { -a } else { a })
            }
        }
    }

    /// `m · 10^e`, correctly rounded (Rust's float parsing is).
    fn parse(&mut self, m: u64, e: i32) -> Result<f64, CodecError> {
        self.scratch.clear();
        write!(self.scratch, "{m}e{e}").map_err(|_| CodecError("format"))?;
        self.scratch.parse().map_err(|_| CodecError("bad decimal"))
    }

    /// A length-prefixed vector of f64s.
    pub fn vector(&mut self) -> Result<Vec<f64>, CodecError> {
        let n = usize::try_from(self.varint()?).map_err(|_| CodecError("length"))?;
        // Every value takes at least one byte: a huge length is corrupt.
        if n > self.rest.len() {
            return Err(CodecError("truncated"));
        }
        (0..n).map(|_| self.f64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(v: f64) -> f64 {
        let mut w = Writer::default();
        w.f64(v);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        let back = r.f64().expect("decodes");
        r.finish().expect("all bytes used");
        back
    }

    #[test]
    fn short_decimals_take_a_few_bytes_and_decode_to_the_same_bits() {
        for (v, len) in [
            (0.0, 1),
            (1.0, 2),
            (-1.0, 2),
            (0.005, 2),
            (1.2345, 3),
            (-0.1234, 3),
            (1e300, 9),
            (0.1 + 0.2, 9),
            (-0.0, 2),
            (f64::MIN_POSITIVE, 9),
            (123_456_789.0, 5),
        ] {
            let mut w = Writer::default();
            w.f64(v);
            assert_eq!(w.into_bytes().len(), len, "{v}");
            assert_eq!(round_trip(v).to_bits(), v.to_bits(), "{v}");
        }
    }

    #[test]
    fn a_bench_context_vector_is_under_four_bytes_a_value() {
        let x: Vec<f64> = std::iter::once(1.0)
            .chain((0..31).map(|i| (i as f64 * 0.1371 - 2.0) * 1.0001))
            .map(|v| (v * 1e4_f64).round() / 1e4)
            .collect();
        let bytes = encode_vector(&x);
        assert!(bytes.len() < 4 * x.len(), "{} bytes", bytes.len());
        assert_eq!(decode_vector(&bytes).unwrap(), x);
    }

    #[test]
    fn truncated_or_trailing_bytes_are_errors() {
        let bytes = encode_vector(&[1.5, 0.1 + 0.2]);
        for n in 0..bytes.len() {
            assert!(decode_vector(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_vector(&longer).is_err());
        // A length far beyond the bytes is refused before allocating.
        let mut w = Writer::default();
        w.varint(u64::MAX);
        assert!(decode_vector(&w.into_bytes()).is_err());
    }

    /// The decimal as `core::fmt`'s `{:e}` gives it (the encoder before
    /// Ryū): the bytes of events already stored must not change meaning.
    fn fmt_decimal(v: f64) -> Option<(bool, u64, i32)> {
        use std::fmt::Write as _;
        if !v.is_finite() {
            return None;
        }
        let a = v.abs();
        if a.fract() == 0.0 && a < 1e15 {
            return decimal(v);
        }
        let mut text = String::new();
        write!(text, "{a:e}").ok()?;
        let (digits, exp) = text.split_once('e')?;
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let m: u64 = format!("{int}{frac}").parse().ok()?;
        let e = exp.parse::<i32>().ok()? - frac.len() as i32;
        (-63..=63)
            .contains(&e)
            .then_some((v.is_sign_negative(), m, e))
    }

    proptest! {
        #[test]
        fn ryu_gives_the_decimal_fmt_gave(bits in any::<u64>(), n in -10_000_000i64..10_000_000, digits in 0u32..8) {
            // Where 17 digits are needed the shortest decimal is not unique
            // and the two may pick different ones; such a mantissa is too
            // long to be used (the raw bytes are written instead).
            let used = |d: Option<(bool, u64, i32)>| d.filter(|&(_, m, _)| varint_len(m) < 8);
            let v = f64::from_bits(bits);
            prop_assert_eq!(used(decimal(v)), used(fmt_decimal(v)));
            let r = n as f64 / 10f64.powi(digits as i32);
            prop_assert_eq!(decimal(r), fmt_decimal(r));
        }

        #[test]
        fn every_f64_decodes_to_its_own_bits(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            prop_assume!(v.is_finite());
            prop_assert_eq!(round_trip(v).to_bits(), bits);
        }

        #[test]
        fn rounded_decimals_decode_exactly(n in -10_000_000i64..10_000_000, digits in 0u32..8) {
            let v = n as f64 / 10f64.powi(digits as i32);
            prop_assert_eq!(round_trip(v).to_bits(), v.to_bits());
        }

        #[test]
        fn strings_varints_and_vectors_round_trip(
            s in ".{0,40}", v in any::<u64>(), x in proptest::collection::vec(-1e6f64..1e6, 0..40)
        ) {
            let mut w = Writer::default();
            w.str(&s).varint(v).vector(&x);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.str().unwrap(), s.as_str());
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.vector().unwrap(), x);
            prop_assert!(r.finish().is_ok());
        }
    }
}
