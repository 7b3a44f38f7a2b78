//! Parsing of the small value languages on the command line: size specs
//! (`4KiB`, `1KiB..1MiB`, through the shared size parser), durations and mixed
//! workload weights (`get=45,put=15,head=30,delete=10`).

use rand::Rng;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use meridian_common::duration::parse_duration;
/// Sizes and durations use Meridian's one grammar each: `10MB` is 10^6 bytes here as in
/// every other command (see [`meridian_common::size`]).
pub use meridian_common::size::{format_size, parse_size};

/// An object size: fixed, or drawn log-uniformly from an inclusive range
/// (so `1KiB..1MiB` gives as many objects in 1–32 KiB as in 32 KiB–1 MiB,
/// like warp's random sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// Every object has this size.
    Fixed(u64),
    /// Sizes between `min` and `max` inclusive.
    Range {
        /// Smallest size.
        min: u64,
        /// Largest size.
        max: u64,
    },
}

impl SizeSpec {
    /// The largest size this spec can produce (for preallocating payloads).
    pub fn max(&self) -> u64 {
        match *self {
            SizeSpec::Fixed(n) => n,
            SizeSpec::Range { max, .. } => max,
        }
    }

    /// Draws one size.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match *self {
            SizeSpec::Fixed(n) => n,
            SizeSpec::Range { min, max } => {
                let lo = (min.max(1) as f64).ln();
                let hi = (max.max(1) as f64).ln();
                if hi <= lo {
                    return max;
                }
                let v = rng.random_range(lo..=hi).exp().round() as u64;
                v.clamp(min, max)
            }
        }
    }
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((a, b)) = s.split_once("..") {
            let min = parse_size(a).map_err(|e| e.to_string())?;
            let max = parse_size(b.trim_start_matches('=')).map_err(|e| e.to_string())?;
            if min > max {
                return Err(format!("size range {s:?}: the minimum is above the maximum"));
            }
            Ok(SizeSpec::Range { min, max })
        } else {
            Ok(SizeSpec::Fixed(parse_size(s).map_err(|e| e.to_string())?))
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SizeSpec::Fixed(n) => f.write_str(&format_size(n)),
            SizeSpec::Range { min, max } => {
                write!(f, "{}..{}", format_size(min), format_size(max))
            }
        }
    }
}

/// A duration on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(DurationArg).map_err(|e| e.to_string())
    }
}

/// Operation types the `mixed` workload draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MixOp {
    /// GET a random existing object.
    Get,
    /// PUT a new object.
    Put,
    /// HEAD a random existing object.
    Head,
    /// DELETE a random existing object.
    Delete,
    /// LIST a page of keys.
    List,
}

/// Weights of the mixed workload. The default is warp's: 45% GET, 15% PUT,
/// 30% HEAD (warp's STAT), 10% DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    entries: Vec<(MixOp, u32)>,
    total: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self::from_entries(vec![(MixOp::Get, 45), (MixOp::Put, 15), (MixOp::Head, 30), (MixOp::Delete, 10)])
            .unwrap_or_else(|_| unreachable!("the default weights are valid"))
    }
}

impl Weights {
    fn from_entries(entries: Vec<(MixOp, u32)>) -> Result<Self, String> {
        let total: u32 = entries.iter().map(|e| e.1).sum();
        if total == 0 {
            return Err("weights must not all be zero".into());
        }
        Ok(Self { entries, total })
    }

    /// Picks an operation with probability proportional to its weight.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> MixOp {
        let mut r = rng.random_range(0..self.total);
        for (op, w) in &self.entries {
            if r < *w {
                return *op;
            }
            r -= w;
        }
        // Unreachable when total is the sum of the weights.
        self.entries.last().map(|e| e.0).unwrap_or(MixOp::Get)
    }

    /// The share of each operation, in percent, for reports.
    pub fn shares(&self) -> Vec<(MixOp, f64)> {
        self.entries.iter().map(|(op, w)| (*op, 100.0 * f64::from(*w) / f64::from(self.total))).collect()
    }
}

impl FromStr for Weights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut entries: Vec<(MixOp, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part.split_once(['=', ':']).ok_or_else(|| format!("weight {part:?} is not NAME=NUMBER"))?;
            let op = match name.trim().to_ascii_lowercase().as_str() {
                "get" => MixOp::Get,
                "put" => MixOp::Put,
                "head" | "stat" => MixOp::Head,
                "delete" | "del" => MixOp::Delete,
                "list" => MixOp::List,
                other => {
                    return Err(format!("unknown operation {other:?} in weights (use get, put, head, delete, list)"));
                }
            };
            let w: u32 = w
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("weight {part:?}: {w:?} is not a whole number"))?;
            if entries.iter().any(|e| e.0 == op) {
                return Err(format!("operation {name:?} appears twice in weights"));
            }
            entries.push((op, w));
        }
        Self::from_entries(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn sizes_parse_in_both_unit_systems() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("4KB").unwrap(), 4000);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size(" 10 B ").unwrap(), 10);
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("4 parsecs").unwrap_err().to_string().contains("unknown unit"));
        // SI means SI here too (before the shared parser, `meridian volume` read it as 2^20).
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("1e3").is_err());
    }

    #[test]
    fn size_specs_fixed_and_range() {
        assert_eq!("4KiB".parse::<SizeSpec>().unwrap(), SizeSpec::Fixed(4096));
        let r: SizeSpec = "1KiB..1MiB".parse().unwrap();
        assert_eq!(r, SizeSpec::Range { min: 1024, max: 1 << 20 });
        assert_eq!(r.max(), 1 << 20);
        assert!("2MiB..1MiB".parse::<SizeSpec>().is_err());
        assert_eq!(r.to_string(), "1 KiB..1 MiB");
        assert_eq!(SizeSpec::Fixed(64 << 20).to_string(), "64 MiB");
    }

    #[test]
    fn range_samples_stay_inside_and_spread_log_uniformly() {
        let r: SizeSpec = "1KiB..1MiB".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut below_32k = 0;
        for _ in 0..10_000 {
            let v = r.sample(&mut rng);
            assert!((1024..=1 << 20).contains(&v));
            if v < 32 * 1024 {
                below_32k += 1;
            }
        }
        // log-uniform: half the mass below the geometric midpoint (32 KiB).
        assert!((4_500..5_500).contains(&below_32k), "{below_32k}");
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(SizeSpec::Fixed(5).sample(&mut rng), 5);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("5").is_ok());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn default_weights_are_warps() {
        let w = Weights::default();
        let shares = w.shares();
        assert_eq!(shares, vec![(MixOp::Get, 45.0), (MixOp::Put, 15.0), (MixOp::Head, 30.0), (MixOp::Delete, 10.0)]);
    }

    #[test]
    fn weights_parse_and_pick_proportionally() {
        let w: Weights = "get=3, put=1".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(42);
        let mut gets = 0;
        for _ in 0..40_000 {
            match w.pick(&mut rng) {
                MixOp::Get => gets += 1,
                MixOp::Put => {}
                other => panic!("picked {other:?}"),
            }
        }
        assert!((29_000..31_000).contains(&gets), "{gets}");
        assert!("get=0,put=0".parse::<Weights>().is_err());
        assert!("get=1,get=2".parse::<Weights>().is_err());
        assert!("fly=1".parse::<Weights>().unwrap_err().contains("unknown"));
        assert!("get".parse::<Weights>().is_err());
        let w: Weights = "stat:30%,get:70%".parse().unwrap();
        assert_eq!(w.shares()[0], (MixOp::Head, 30.0));
    }
}
