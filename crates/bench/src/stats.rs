//! The arithmetic of the report, kept pure so it can be tested: medians over rounds,
//! nearest-rank percentiles over timed runs, ratios between sides.
//!
//! Every figure the benchmark prints is a median over interleaved rounds, taken per
//! metric (the median req/s and the median p50 may come from different rounds), as the
//! reference measurements of Incus and of the ceiling were taken.

/// The median of `values` (the mean of the middle two for an even count); `None` when
/// there is nothing to take it of. Values that are not numbers are left out.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The lowest and highest of `values`.
pub fn range(values: &[f64]) -> Option<(f64, f64)> {
    let finite = values.iter().copied().filter(|x| x.is_finite());
    finite.fold(None, |acc, x| match acc {
        None => Some((x, x)),
        Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
    })
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `values`: the smallest value with
/// at least p % of the values at or below it. With 20 values the p99 is the maximum.
pub fn percentile(values: &[f64], p: u32) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() || p == 0 || p > 100 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p as usize * v.len()).div_ceil(100).max(1);
    Some(v[rank - 1])
}

/// `a / b`, or `None` when `b` is not a positive number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
    }

    #[test]
    fn t30_median_skips_what_is_not_a_number() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[f64::NAN, 5.0, 1.0]), Some(3.0));
    }

    #[test]
    fn t10_range() {
        assert_eq!(range(&[2.0, 9.0, 4.0]), Some((2.0, 9.0)));
        assert_eq!(range(&[]), None);
    }

    #[test]
    fn t10_nearest_rank_percentiles() {
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 50), Some(10.0));
        assert_eq!(percentile(&twenty, 99), Some(20.0), "p99 of 20 is the maximum");
        assert_eq!(percentile(&twenty, 100), Some(20.0));
        assert_eq!(percentile(&[0.3], 50), Some(0.3));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99), Some(99.0));
        assert_eq!(percentile(&hundred, 1), Some(1.0));
    }

    #[test]
    fn t30_percentile_bounds() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[1.0], 0), None);
        assert_eq!(percentile(&[1.0], 101), None);
    }

    #[test]
    fn t10_ratio() {
        assert_eq!(ratio(9.0, 3.0), Some(3.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, f64::NAN), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
