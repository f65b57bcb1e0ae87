//! Seeding: every round's randomness comes from its own generator, a pure
//! function of (seed, round, stream), so a run is reproducible bit for bit
//! and every policy in a run sees the same contexts and the same potential
//! outcomes (common random numbers).

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

/// SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective mix that
/// turns nearby integers into unrelated seeds.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of one stream of one round.
pub fn round_rng(seed: u64, round: u64, stream: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(mix_seed(mix_seed(seed, stream), round))
}
