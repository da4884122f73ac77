//! Statistics of benchmark rounds, shared by the `kvmreg-*-bench` binaries.

/// Median and a distribution-free confidence interval of at least 95% for
/// it: order statistics k and n+1-k, k the largest with
/// P(Binomial(n, 1/2) < k) <= 2.5%. Fewer than 6 values give no interval
/// (the sample's range stands in).
pub fn median_ci(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // P(X <= j) for X ~ Binomial(n, 1/2), by the recurrence of C(n, j).
    let mut k = 1;
    let mut c = 1.0f64;
    let mut cdf = 0.0;
    let total = 2f64.powi(n as i32);
    for j in 0..n {
        // cdf = P(X <= j) = P(X < j + 1).
        cdf += c / total;
        if cdf > 0.025 {
            break;
        }
        k = j + 1;
        c = c * (n - j) as f64 / (j + 1) as f64;
    }
    let k = k.min(n.div_ceil(2));
    (v[k - 1], med, v[n - k])
}

#[cfg(test)]
mod tests {
    use super::median_ci;

    #[test]
    fn median_interval_uses_binomial_order_statistics() {
        // n = 11: P(X <= 1) = 0.6%, P(X <= 2) = 3.3%: the 2nd and 10th.
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(median_ci(v), (2.0, 6.0, 10.0));
        // n = 21: P(X <= 5) = 1.3%, P(X <= 6) = 3.9%: the 6th and 16th.
        let v: Vec<f64> = (1..=21).rev().map(f64::from).collect();
        assert_eq!(median_ci(v), (6.0, 11.0, 16.0));
        // Too few values for an interval: the range.
        assert_eq!(median_ci(vec![3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
    }
}
