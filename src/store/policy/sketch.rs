//! TinyLFU's frequency sketch: how often each key was stored (fetched after a miss), with
//! a doorkeeper in front and halved every `10 ×` the entries held so old popularity fades.
//!
//! The doorkeeper is a Bloom filter that takes a key's first store in a period: only keys
//! stored again reach the count-min sketch (four rows of byte counters, saturating at 15),
//! so the one-off URLs of a crawl do not fill its counters with noise. Only stores add,
//! never hits: a hit stays one relaxed counter on the entry, and the sketch ranks what the
//! cache has to choose between, the keys it does not hold or is about to drop.

/// Budget bytes per expected entry the sketch is sized for (a small response's charge).
const BYTES_PER_ENTRY: usize = 2048;
const MIN_ENTRIES: usize = 64;
const MAX_ENTRIES: usize = 1 << 22;
const ROWS: usize = 4;
/// Doorkeeper bits per expected entry: ten periods' worth of keys at a few % false positives.
const DOOR_BITS_PER_ENTRY: usize = 64;
const DOOR_HASHES: u32 = 3;
const MAX_COUNT: u8 = 15;
const SEEDS: [u64; ROWS] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
];

/// A count-min sketch with a doorkeeper and aging.
pub(crate) struct Sketch {
    counters: Vec<u8>,
    shift: u32,
    width: usize,
    door: Vec<u64>,
    door_shift: u32,
    additions: usize,
}

fn mix(hash: u64, seed: u64) -> u64 {
    (hash ^ seed)
        .wrapping_mul(0x2545_F491_4F6C_DD1D)
        .rotate_left(29)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Sketch {
    /// A sketch sized for a budget of `max_bytes`.
    pub(crate) fn for_budget(max_bytes: usize) -> Sketch {
        let width = (max_bytes / BYTES_PER_ENTRY)
            .clamp(MIN_ENTRIES, MAX_ENTRIES)
            .next_power_of_two();
        let door_bits = width * DOOR_BITS_PER_ENTRY;
        Sketch {
            counters: vec![0; ROWS * width],
            shift: 64 - width.trailing_zeros(),
            width,
            door: vec![0; door_bits / 64],
            door_shift: 64 - door_bits.trailing_zeros(),
            additions: 0,
        }
    }

    fn index(&self, row: usize, hash: u64) -> usize {
        row * self.width + (mix(hash, SEEDS[row]) >> self.shift) as usize
    }

    fn door_bits(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        (0..DOOR_HASHES)
            .map(move |i| (mix(hash, SEEDS[i as usize] ^ 0xA5A5) >> self.door_shift) as usize)
    }

    fn at_door(&self, hash: u64) -> bool {
        self.door_bits(hash)
            .all(|bit| self.door[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// How often `hash` was added this period (an overestimate at worst).
    pub(crate) fn estimate(&self, hash: u64) -> u8 {
        if !self.at_door(hash) {
            return 0;
        }
        let counted = (0..ROWS)
            .map(|row| self.counters[self.index(row, hash)])
            .min()
            .unwrap_or(0);
        counted + 1
    }

    /// Count `hash` once more; returns its new estimate. The first time in a period it only
    /// passes the doorkeeper; after that, its lowest counters grow (a conservative update,
    /// which keeps other keys' estimates tighter). Every `10 × live` additions, counters are
    /// halved and the doorkeeper cleared.
    pub(crate) fn add(&mut self, hash: u64, live: usize) -> u8 {
        if self.at_door(hash) {
            let current = self.estimate(hash) - 1;
            if current < MAX_COUNT {
                for row in 0..ROWS {
                    let i = self.index(row, hash);
                    if self.counters[i] == current {
                        self.counters[i] += 1;
                    }
                }
            }
        } else {
            let bits: Vec<usize> = self.door_bits(hash).collect();
            for bit in bits {
                self.door[bit / 64] |= 1 << (bit % 64);
            }
        }
        let estimate = self.estimate(hash);
        self.additions += 1;
        if self.additions >= 10 * live.clamp(MIN_ENTRIES, self.width) {
            for c in &mut self.counters {
                *c /= 2;
            }
            self.door.fill(0);
            self.additions = 0;
        }
        estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_separate_keys_and_fade() {
        let mut sketch = Sketch::for_budget(1 << 20);
        for _ in 0..5 {
            sketch.add(7, 100);
        }
        sketch.add(8, 100);
        assert_eq!(sketch.estimate(7), 5);
        assert_eq!(sketch.estimate(8), 1);
        assert_eq!(sketch.estimate(9), 0);
        // A period of other keys halves every counter and clears the doorkeeper.
        for k in 1000..2000u64 {
            sketch.add(k.wrapping_mul(0x2545_F491_4F6C_DD1D), 100);
        }
        assert_eq!(
            sketch.estimate(7),
            0,
            "counted again only once it comes back"
        );
        sketch.add(7, 100);
        assert_eq!(sketch.estimate(7), 3, "its halved count is back");
    }
}
