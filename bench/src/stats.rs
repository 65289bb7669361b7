//! The statistics of the `policy` benchmark: median and spread of repeated trials, latency
//! percentiles and a CDF from the sink's samples, and the sink's latency line (written by the
//! sink, read back by the harness). Pure and tested.

use serde::Serialize;

/// Median, minimum and maximum of repeated measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// `None` for no values; NaNs are ignored.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// (max - min) / median, the spread as a fraction; 0 for a zero median.
    pub fn relative(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }
}

/// The value at quantile `q` (0..=1) of sorted `values`, nearest rank; `None` when empty.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// Quantiles the CDF keeps: 1% steps, then the tail in finer steps.
pub const CDF_QUANTILES: [f64; 104] = {
    let mut q = [0.0; 104];
    let mut i = 0;
    while i < 100 {
        q[i] = (i + 1) as f64 / 100.0;
        i += 1;
    }
    q[99] = 0.995;
    q[100] = 0.999;
    q[101] = 0.9995;
    q[102] = 0.9999;
    q[103] = 1.0;
    q
};

/// One-way latency from payload timestamps.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    /// (quantile, ns) at [`CDF_QUANTILES`].
    pub cdf: Vec<(f64, u64)>,
}

impl Latency {
    /// From unsorted samples (sorted in place); `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Latency> {
        samples.sort_unstable();
        let q = |p| quantile(samples, p);
        Some(Latency {
            samples: samples.len() as u64,
            p50_ns: q(0.5)?,
            p99_ns: q(0.99)?,
            p999_ns: q(0.999)?,
            cdf: CDF_QUANTILES
                .iter()
                .filter_map(|&p| Some((p, q(p)?)))
                .collect(),
        })
    }

    /// The sink's line: `latency <samples> <p50> <p99> <p99.9> cdf q:ns,q:ns,...`.
    pub fn to_line(&self) -> String {
        let cdf: Vec<String> = self.cdf.iter().map(|(q, ns)| format!("{q}:{ns}")).collect();
        format!(
            "latency {} {} {} {} cdf {}",
            self.samples,
            self.p50_ns,
            self.p99_ns,
            self.p999_ns,
            cdf.join(",")
        )
    }

    /// Reads [`Latency::to_line`]'s output; `None` for anything else.
    pub fn parse_line(line: &str) -> Option<Latency> {
        let mut it = line.strip_prefix("latency ")?.split_whitespace();
        let mut num = || it.next()?.parse::<u64>().ok();
        let (samples, p50_ns, p99_ns, p999_ns) = (num()?, num()?, num()?, num()?);
        let cdf_text = line.split_once(" cdf ").map_or("", |(_, c)| c.trim());
        let mut cdf = Vec::new();
        for pair in cdf_text.split(',').filter(|p| !p.is_empty()) {
            let (q, ns) = pair.split_once(':')?;
            cdf.push((q.parse().ok()?, ns.parse().ok()?));
        }
        Some(Latency {
            samples,
            p50_ns,
            p99_ns,
            p999_ns,
            cdf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(s.relative(), 1.0);
        assert_eq!(Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[f64::NAN, 5.0]).unwrap().median, 5.0);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[0.0]).unwrap().relative(), 0.0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), Some(500));
        assert_eq!(quantile(&v, 0.99), Some(990));
        assert_eq!(quantile(&v, 0.999), Some(999));
        assert_eq!(quantile(&v, 1.0), Some(1000));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[7], 0.999), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn latency_from_samples_and_its_line_round_trips() {
        let mut samples: Vec<u64> = (1..=10_000).rev().collect();
        let l = Latency::of(&mut samples).unwrap();
        assert_eq!((l.p50_ns, l.p99_ns, l.p999_ns), (5000, 9900, 9990));
        assert_eq!(l.cdf.len(), CDF_QUANTILES.len());
        assert_eq!(l.cdf.last(), Some(&(1.0, 10_000)));
        assert!(l.cdf.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(Latency::parse_line(&l.to_line()), Some(l));
        assert_eq!(Latency::of(&mut []), None);
        assert_eq!(Latency::parse_line("total 5 1.0 5"), None);
        assert_eq!(Latency::parse_line("latency 1 2 x 4 cdf "), None);
    }

    #[test]
    fn cdf_quantiles_increase_to_one() {
        assert!(CDF_QUANTILES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CDF_QUANTILES[103], 1.0);
    }
}
