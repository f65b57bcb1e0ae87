//! A compact, versioned binary encoding of [`ModelState`] (the value kept
//! in Redis).
//!
//! Layout, all little-endian:
//!
//! ```text
//! magic  b"NDGM"        4 bytes
//! format u16 = 1        the layout version below
//! flags  u16 = 0        reserved
//! dim    u32            d
//! arms   u32            K
//! version u64           the model version
//! K times:
//!   count      u64
//!   reward_sum f64
//!   xr         d × f64
//!   xx         d(d+1)/2 × f64, the upper triangle row by row
//! crc32  u32            CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Plain fixed-width arrays keep the blob readable by a Redis Lua script
//! (`struct.unpack`), which is how replicas will add deltas atomically.
//! Decoding checks the length against the header before reading, the
//! checksum, and that every number is finite and every `xx` diagonal
//! non-negative: a corrupt or truncated blob is an error, never a panic or a
//! poisoned model.

use super::{ArmStats, ModelState};
use ndarray::{Array1, Array2};

const MAGIC: &[u8; 4] = b"NDGM";
const FORMAT: u16 = 1;
const HEADER: usize = 4 + 2 + 2 + 4 + 4 + 8;
/// Largest dimension a blob may declare (policies are limited far below).
pub const MAX_DIM: usize = 4096;
/// Largest number of arms a blob may declare.
pub const MAX_ARMS: usize = 1 << 16;

/// Why a blob could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than a header.
    #[error("blob too short for a header ({0} bytes)")]
    Truncated(usize),
    /// Not a model state blob.
    #[error("bad magic bytes")]
    BadMagic,
    /// Written by a newer (or unknown) format.
    #[error("unsupported format version {0}")]
    UnsupportedFormat(u16),
    /// Header dimensions beyond the limits.
    #[error("declared shape d={dim}, arms={arms} exceeds the limits")]
    TooLarge {
        /// Declared dimension.
        dim: usize,
        /// Declared arms.
        arms: usize,
    },
    /// Length disagrees with the header.
    #[error("blob has {got} bytes, its header implies {expected}")]
    WrongLength {
        /// Implied by the header.
        expected: usize,
        /// Actual.
        got: usize,
    },
    /// CRC mismatch.
    #[error("checksum mismatch")]
    Checksum,
    /// A NaN, infinity or negative diagonal.
    #[error("arm {arm}: invalid statistics ({what})")]
    InvalidValue {
        /// Which arm.
        arm: usize,
        /// What was wrong.
        what: &'static str,
    },
}

fn arm_bytes(dim: usize) -> usize {
    8 + 8 + 8 * dim + 8 * (dim * (dim + 1) / 2)
}

/// Encodes a state.
///
/// Contract: all arms share one dimension `<= MAX_DIM`, at most `MAX_ARMS`
/// arms (true of any state built from a validated policy).
pub fn encode(state: &ModelState) -> Vec<u8> {
    let dim = state.dim();
    let mut out = Vec::with_capacity(HEADER + state.arms.len() * arm_bytes(dim) + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    out.extend_from_slice(&(state.arms.len() as u32).to_le_bytes());
    out.extend_from_slice(&state.version.to_le_bytes());
    for arm in &state.arms {
        out.extend_from_slice(&arm.count.to_le_bytes());
        out.extend_from_slice(&arm.reward_sum.to_le_bytes());
        for v in &arm.xr {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for i in 0..dim {
            for j in i..dim {
                out.extend_from_slice(&arm.xx[[i, j]].to_le_bytes());
            }
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A cursor that has already been bounds-checked as a whole.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let chunk: [u8; N] = self.bytes[self.pos..self.pos + N]
            .try_into()
            .expect("length checked against the header");
        self.pos += N;
        chunk
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take())
    }
}

/// Decodes a blob written by [`encode`], validating it completely.
pub fn decode(bytes: &[u8]) -> Result<ModelState, CodecError> {
    if bytes.len() < HEADER + 4 {
        return Err(CodecError::Truncated(bytes.len()));
    }
    let mut c = Cursor { bytes, pos: 0 };
    if &c.take::<4>() != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let format = c.u16();
    if format != FORMAT {
        return Err(CodecError::UnsupportedFormat(format));
    }
    let _flags = c.u16();
    let dim = c.u32() as usize;
    let arms = c.u32() as usize;
    if dim > MAX_DIM || arms > MAX_ARMS {
        return Err(CodecError::TooLarge { dim, arms });
    }
    let expected = HEADER + arms * arm_bytes(dim) + 4;
    if bytes.len() != expected {
        return Err(CodecError::WrongLength {
            expected,
            got: bytes.len(),
        });
    }
    let (body, crc) = bytes.split_at(expected - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(CodecError::Checksum);
    }
    let version = c.u64();
    let mut out = Vec::with_capacity(arms);
    for arm in 0..arms {
        let bad = |what| CodecError::InvalidValue { arm, what };
        let count = c.u64();
        let reward_sum = c.f64();
        let xr = Array1::from_shape_fn(dim, |_| c.f64());
        let mut xx = Array2::zeros((dim, dim));
        for i in 0..dim {
            for j in i..dim {
                let v = c.f64();
                xx[[i, j]] = v;
                xx[[j, i]] = v;
            }
        }
        if !reward_sum.is_finite() || xr.iter().chain(xx.iter()).any(|v| !v.is_finite()) {
            return Err(bad("non-finite number"));
        }
        if xx.diag().iter().any(|v| *v < 0.0) {
            return Err(bad("negative diagonal in Σxxᵀ"));
        }
        out.push(ArmStats {
            xx,
            xr,
            count,
            reward_sum,
        });
    }
    Ok(ModelState { version, arms: out })
}
