//! Seeded dice for the mocks: the same seed and the same question give the same
//! answer, whatever order calls arrive in, so a run reproduces.

/// FNV-1a over the parts, then a SplitMix64 finish: stable across builds and
/// platforms, unlike `std`'s hasher.
pub(crate) fn hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for part in parts {
        for byte in *part {
            h ^= u64::from(*byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate the parts, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A number in [0, 1) for the question `parts` under `seed`.
pub(crate) fn roll(seed: u64, parts: &[&[u8]]) -> f64 {
    // The top 53 bits make an exactly representable fraction.
    (hash(seed, parts) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_reproduce_and_spread() {
        assert_eq!(roll(7, &[b"order-1"]), roll(7, &[b"order-1"]));
        assert_ne!(roll(7, &[b"order-1"]), roll(8, &[b"order-1"]));
        assert_ne!(hash(0, &[b"ab", b"c"]), hash(0, &[b"a", b"bc"]));
        let n = 10_000;
        let below_03 = (0..n)
            .filter(|i: &u64| roll(42, &[&i.to_le_bytes()]) < 0.3)
            .count();
        let share = below_03 as f64 / n as f64;
        assert!((0.28..0.32).contains(&share), "{share}");
    }
}
