//! Cohen's h: the effect size of a difference between two proportions.

use super::Proportion;

/// Cohen's h from `base` to `tuned`: `2·asin(√p_tuned) - 2·asin(√p_base)`, in [-π, π];
/// positive when the tuned arm passes more often.
pub fn cohens_h(base: Proportion, tuned: Proportion) -> f64 {
    cohens_h_from(base.value(), tuned.value())
}

/// Cohen's h from two raw proportions. Values outside [0, 1] are clamped into it, so the result
/// is never NaN for finite input; prefer [`cohens_h`], whose [`Proportion`]s cannot be out of range.
pub fn cohens_h_from(p_base: f64, p_tuned: f64) -> f64 {
    let phi = |p: f64| 2.0 * p.clamp(0.0, 1.0).sqrt().asin();
    phi(p_tuned) - phi(p_base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    #[test]
    fn by_hand() {
        // 2·asin(√0.5) = π/2 and 2·asin(√0.25) = π/3.
        assert!((cohens_h_from(0.25, 0.5) - PI / 6.0).abs() < 1e-15);
        assert!((cohens_h_from(0.5, 0.25) + PI / 6.0).abs() < 1e-15);
        // All fail to all pass is the largest effect, π.
        let none = Proportion::new("g", 0, 7).unwrap();
        let all = Proportion::new("g", 7, 7).unwrap();
        assert!((cohens_h(none, all) - PI).abs() < 1e-15);
        assert_eq!(cohens_h(all, all), 0.0);
        assert_eq!(cohens_h(none, none), 0.0);
    }
}
