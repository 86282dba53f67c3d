//! Branch-free scalar math that the compiler vectorises, compiled for the CPU it runs on.
//!
//! Release builds target baseline x86-64 (SSE2), so a loop over `f32::exp` or libm's `erff` runs
//! one element at a time. [`multiversion!`](crate::multiversion!) compiles a kernel body three times (AVX-512, AVX2+FMA,
//! baseline) and picks the best the CPU has at run time; the functions here ([`exp`], [`erf`],
//! [`keep_hash`]) are written without branches or calls so that those copies vectorise.
//! On other architectures (aarch64: NEON is baseline) the plain body runs.

/// Defines `$vis fn $name(args)` whose body is compiled for AVX-512, for AVX2+FMA and for the
/// baseline target, dispatched once per call on what the CPU supports. Put the dispatch around a
/// whole row or chunk (not inside a closure handed to rayon: closures do not inherit the
/// enabled features).
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` returned V4/V3 only after detecting these exact features
                    // on this CPU, so the instructions the copies use exist.
                    $crate::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    $crate::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            imp($($arg),*)
        }
    };
}

/// The instruction-set level [`multiversion!`](crate::multiversion!) dispatches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F/BW/DQ/VL (x86-64-v4).
    V4,
    /// AVX2 + FMA (x86-64-v3).
    V3,
    /// The compilation target's baseline.
    Baseline,
}

/// What this CPU supports, detected once. `WICK_SIMD=v3|baseline` caps it (to compare, or to
/// rule the vector kernels out when chasing a numerical difference).
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("WICK_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("v3") => Level::V3,
            _ => Level::V4,
        };
        let detected = detect();
        match (cap, detected) {
            (Level::Baseline, _) | (_, Level::Baseline) => Level::Baseline,
            (Level::V3, _) | (_, Level::V3) => Level::V3,
            _ => Level::V4,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
        Level::V4
    } else if has!("avx2") && has!("fma") {
        Level::V3
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

/// `e^x` within 2 ulp for finite `x` (0 below -87.3, `inf` above 88.3): Cody-Waite reduction to
/// `x = n ln2 + r`, `|r| <= ln2 / 2`, a degree-7 polynomial for `e^r`, and `2^n` built in the
/// exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.3, 88.3);
    let shifted = clamped.mul_add(LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, clamped));
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // The low bits of `shifted` hold n; moved into the exponent field and biased they are 2^n.
    let scale = f32::from_bits((shifted.to_bits() << 23).wrapping_add(127 << 23));
    let y = p * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.3 {
        f32::INFINITY
    } else {
        y
    }
}

/// The error function, within 5e-7 absolute: Abramowitz and Stegun 7.1.26 with the accurate
/// [`exp`] (the approximation PyTorch's vectorised CPU `erf` uses).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / a.mul_add(P, 1.0);
    let mut poly = A5;
    poly = poly.mul_add(t, A4);
    poly = poly.mul_add(t, A3);
    poly = poly.mul_add(t, A2);
    poly = poly.mul_add(t, A1);
    let y = 1.0 - poly * t * exp(-a * a);
    y.copysign(x)
}

/// Accumulator lanes of the reductions below: a fixed order of additions the compiler can keep
/// in vector registers (a plain `iter().sum()` of floats must add in sequence and stays scalar).
const LANES: usize = 16;

/// The sum of `xs`, in 16 interleaved partial sums.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().chain(rest).sum()
}

/// The dot product of `a` and `b` (the shorter length), in 16 interleaved partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let tail = n - n % LANES;
    let mut total: f32 = acc.iter().sum();
    for (x, y) in a[tail..].iter().zip(&b[tail..]) {
        total = x.mul_add(*y, total);
    }
    total
}

/// `sum((x - mean)^2)` over `xs`, in 16 interleaved partial sums.
#[inline(always)]
pub fn sum_squared_deviation(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] = d.mul_add(d, acc[i]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>()
}

/// `sum(a * b * c)` (the shortest length), in 16 interleaved partial sums.
#[inline(always)]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let mut acc = [0f32; LANES];
    for ((x, y), z) in a[..n]
        .chunks_exact(LANES)
        .zip(b[..n].chunks_exact(LANES))
        .zip(c[..n].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] = (x[i] * y[i]).mul_add(z[i], acc[i]);
        }
    }
    let tail = n - n % LANES;
    acc.iter().sum::<f32>() + (tail..n).map(|i| a[i] * b[i] * c[i]).sum::<f32>()
}

/// The largest element of `xs` (`-inf` when empty; NaNs are ignored, as `f32::max` does).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// A 32-bit avalanche hash (Wellons' `lowbias32`): every input bit flips each output bit with
/// probability close to 1/2.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The uniform 32-bit draw for element `index` of the mask keyed by `key`: counter-based, so any
/// element can be drawn (and drawn again in backward) without state, in any order, on any thread.
#[inline(always)]
pub fn keep_hash(key: u64, index: u32) -> u32 {
    let lo = key as u32;
    let hi = (key >> 32) as u32;
    mix32(mix32(index ^ lo).wrapping_add(hi))
}

/// A dropout mask: element `i` is kept, and scaled by `1 / (1 - p)`, when
/// `keep_hash(key, i) >= threshold`; the same mask as [`crate::rng::DropoutRng::keep_mask`] under
/// the same key.
#[derive(Debug, Clone, Copy)]
pub struct Mask {
    pub key: u64,
    pub threshold: u32,
    pub keep_scale: f32,
}

impl Mask {
    /// The mask with drop probability `p` keyed by `key`.
    pub fn new(p: f64, key: u64) -> Self {
        Self {
            key,
            threshold: drop_threshold(p),
            keep_scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// The factor of element `index`: `1 / (1 - p)` or 0.
    #[inline(always)]
    pub fn factor(&self, index: u32) -> f32 {
        if keep_hash(self.key, index) >= self.threshold {
            self.keep_scale
        } else {
            0.0
        }
    }
}

/// The 32-bit threshold below which a draw is dropped, for drop probability `p`.
pub fn drop_threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).clamp(0.0, u32::MAX as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_over_the_float_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001_7;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(1e9), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_is_within_5e7_of_the_double_precision_value() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            let want = libm_erf(x as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
            x += 0.000_73;
        }
        assert!(worst < 5e-7, "worst absolute error {worst}");
        assert!(erf(0.0).abs() < 1e-7);
        assert_eq!(erf(-20.0), -1.0);
    }

    /// erf in f64 from its Taylor series (small |x|) and continued fraction for erfc (large |x|).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 2.5 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Lentz's continued fraction for erfc.
            let mut f = 0.0;
            for k in (1..200).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        value.copysign(x)
    }

    #[test]
    fn keep_hash_draws_are_uniform_and_depend_on_key_and_index() {
        let threshold = drop_threshold(0.1);
        let n = 1 << 20;
        let dropped = (0..n).filter(|&i| keep_hash(42, i) < threshold).count();
        let rate = dropped as f64 / n as f64;
        assert!((rate - 0.1).abs() < 0.002, "drop rate {rate}");
        let same = (0..4096)
            .filter(|&i| keep_hash(42, i) == keep_hash(43, i))
            .count();
        assert!(same < 4, "{same} equal draws under different keys");
        let hi_only = (0..4096)
            .filter(|&i| keep_hash(42, i) == keep_hash(42 | (1 << 40), i))
            .count();
        assert!(hi_only < 4, "the key's high half is ignored");
    }

    #[test]
    fn lane_reductions_match_sequential_ones() {
        for n in [0, 1, 15, 16, 17, 100, 1000] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 101) as f32 * 0.25 - 12.0)
                .collect();
            let ys: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 * 0.5).collect();
            let want_sum: f64 = xs.iter().map(|&x| x as f64).sum();
            let want_dot: f64 = xs.iter().zip(&ys).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((sum(&xs) as f64 - want_sum).abs() < 1e-3, "sum of {n}");
            assert!((dot(&xs, &ys) as f64 - want_dot).abs() < 1e-2, "dot of {n}");
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want_max, "max of {n}");
        }
    }

    multiversion! {
        fn sum_of_exps(xs: &[f32]) -> f32 {
            xs.iter().map(|&x| exp(x)).sum()
        }
    }

    #[test]
    fn multiversioned_kernels_agree_with_the_plain_body() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.01).collect();
        let plain: f32 = xs.iter().map(|&x| exp(x)).sum();
        let dispatched = sum_of_exps(&xs);
        assert!(
            (plain - dispatched).abs() <= 1e-3 * plain.abs(),
            "{plain} vs {dispatched}"
        );
    }
}
