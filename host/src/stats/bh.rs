//! Benjamini-Hochberg adjusted p-values (false discovery rate).

use super::StatsError;

/// Benjamini-Hochberg adjusted p-values, in the order of `p`: with `p₍₁₎ ≤ … ≤ p₍ₘ₎` sorted,
/// the adjusted value of `p₍ₖ₎` is `min over j ≥ k of p₍ⱼ₎·m/j`, capped at 1. Monotone in `p`,
/// ties get equal values, one p-value is returned unchanged and an empty list gives an empty list.
/// As statsmodels' `multipletests(p, method="fdr_bh")`. A p-value outside [0, 1] (or NaN) is an
/// error naming its position.
pub fn benjamini_hochberg(p: &[f64]) -> Result<Vec<f64>, StatsError> {
    if let Some((index, &value)) = p.iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
        return Err(StatsError::InvalidPValue { index, value });
    }
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut adjusted = vec![0.0; m];
    let mut running = f64::INFINITY;
    for (rank, &i) in order.iter().enumerate().rev() {
        let raw = p[i] / ((rank + 1) as f64 / m as f64);
        running = running.min(raw);
        adjusted[i] = running.min(1.0);
    }
    Ok(adjusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // Sorted: 0.01, 0.01, 0.04, 1, 1 (m = 5): 0.01·5/2 = 0.025 for both ties, 0.04·5/3, 1, 1.
        let adj = benjamini_hochberg(&[1.0, 0.01, 0.01, 1.0, 0.04]).unwrap();
        let want = [1.0, 0.025, 0.025, 1.0, 0.2 / 3.0];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-15, "{adj:?}");
        }
        // Monotone: 0.03·3/2 = 0.045 is above 0.04·3/3, so it takes 0.04.
        let adj = benjamini_hochberg(&[0.04, 0.03, 0.001]).unwrap();
        for (a, w) in adj.iter().zip([0.04, 0.04, 0.003]) {
            assert!((a - w).abs() < 1e-15, "{adj:?}");
        }
    }

    #[test]
    fn degenerate() {
        assert_eq!(benjamini_hochberg(&[]).unwrap(), Vec::<f64>::new());
        assert_eq!(benjamini_hochberg(&[0.3]).unwrap(), vec![0.3]);
        assert_eq!(benjamini_hochberg(&[1.0, 1.0]).unwrap(), vec![1.0, 1.0]);
        assert_eq!(benjamini_hochberg(&[0.9, 0.8]).unwrap(), vec![0.9, 0.9]);
    }

    #[test]
    fn rejects_values_outside_the_unit_interval() {
        let e = benjamini_hochberg(&[0.1, 1.5]).unwrap_err();
        assert_eq!(e.to_string(), "p-value [1] is 1.5, not in [0, 1]");
        assert!(benjamini_hochberg(&[f64::NAN]).is_err());
        assert!(benjamini_hochberg(&[-0.0]).is_ok());
    }
}
