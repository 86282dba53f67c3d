//! Row-major f32 matrix products on the CPU for the fused kernels that multiply sub-matrices in
//! place: one attention head inside a `(batch * seq, hidden)` activation, a transposed operand,
//! an accumulating output. Every extent is checked against its slice before the call.
//!
//! The backend follows the build, as Candle's own matmul does: the `gemm` crate by default (the
//! kernels Candle's CPU matmul runs, AVX-512 included), the BLAS `sgemm` of Apple's Accelerate
//! with `--features accelerate` (what a Mac's CPU should use) or of Intel MKL with
//! `--features mkl`. The BLAS backends run single-threaded per call (MKL is told so per thread),
//! and [`Threads::Pool`] splits the output rows over rayon's pool, so one pool does all the
//! work and no OpenMP threads spin against it.

use candle_core::Result;

/// A matrix read from a row-major slice: element `(i, j)` is `data[i * ld + j]`, or
/// `data[j * ld + i]` when `trans` (the slice holds the transpose).
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub trans: bool,
}

impl<'a> View<'a> {
    /// The matrix stored row-major with leading dimension `ld`.
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            ld,
            trans: false,
        }
    }

    /// The transpose of the matrix stored row-major with leading dimension `ld`.
    pub fn transposed(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            ld,
            trans: true,
        }
    }

    /// Checks that a `rows x cols` matrix fits; returns its (row, column) strides.
    fn strides(&self, rows: usize, cols: usize, what: &str) -> Result<(isize, isize)> {
        let (stored_rows, stored_cols) = if self.trans {
            (cols, rows)
        } else {
            (rows, cols)
        };
        check_fits(self.data.len(), stored_rows, stored_cols, self.ld, what)?;
        Ok(if self.trans {
            (1, self.ld as isize)
        } else {
            (self.ld as isize, 1)
        })
    }
}

fn check_fits(len: usize, rows: usize, cols: usize, ld: usize, what: &str) -> Result<()> {
    if cols > ld || (rows > 0 && (rows - 1) * ld + cols > len) {
        candle_core::bail!(
            "matmul: {what} of {rows}x{cols} with leading dimension {ld} does not fit in {len} values"
        )
    }
    Ok(())
}

/// The kernel an f32 product of `(m, n, k)` (the left operand transposed or not) runs on the CPU
/// in this build on this machine:
/// `"amx"` (tiles, f32 as three bf16 pieces; see [`crate::amx`]), else the build's backend
/// (`"gemm"`, `"mkl"` or `"accelerate"`).
pub fn kernel((m, n, k): (usize, usize, usize), left_transposed: bool) -> &'static str {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if crate::amx::worth((m, n, k), left_transposed) && crate::amx::available() {
        return "amx";
    }
    let _ = (m, n, k, left_transposed);
    backend::NAME
}

/// What f32 products on the CPU run on in this build on this machine, in words.
pub fn describe() -> String {
    let backend = backend::DESCRIPTION;
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    return match crate::amx::status() {
        Ok(()) => format!(
            "AMX tiles (each f32 as three bf16 pieces, f32 accuracy) for products of 2^21 \
             multiply-adds or more over 32 to {} with a row-major left operand, {backend} otherwise",
            crate::amx::MAX_K
        ),
        Err(why) => format!("{backend} (AMX not used: {why})"),
    };
    #[allow(unreachable_code)]
    backend.to_string()
}

/// Whether the product runs on rayon's pool or on the calling thread (inside a parallel loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Pool,
    Caller,
}

/// `c = beta * c + alpha * a @ b` with `a` `m x k`, `b` `k x n` and `c` `m x n` stored row-major
/// with leading dimension `ldc`. `beta` is 0 (overwrite; `c` is not read) or 1 (accumulate).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    (m, n, k): (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    c: &mut [f32],
    ldc: usize,
    beta: f32,
    alpha: f32,
    threads: Threads,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (a_rs, a_cs) = a.strides(m, k, "left operand")?;
    let (b_rs, b_cs) = b.strides(k, n, "right operand")?;
    check_fits(c.len(), m, n, ldc, "output")?;
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if crate::amx::worth((m, n, k), a.trans) && crate::amx::available() {
        crate::amx::gemm((m, n, k), a, b, c, ldc, beta, alpha, threads);
        return Ok(());
    }
    backend::gemm(
        (m, n, k),
        a,
        (a_rs, a_cs),
        b,
        (b_rs, b_cs),
        c,
        ldc,
        beta,
        alpha,
        threads,
    );
    Ok(())
}

#[cfg(not(any(feature = "mkl", feature = "accelerate")))]
mod backend {
    use super::{Threads, View};

    pub(super) const NAME: &str = "gemm";
    pub(super) const DESCRIPTION: &str = "the gemm crate";

    /// The product through the `gemm` crate; extents already checked by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        (m, n, k): (usize, usize, usize),
        a: View<'_>,
        (a_rs, a_cs): (isize, isize),
        b: View<'_>,
        (b_rs, b_cs): (isize, isize),
        c: &mut [f32],
        ldc: usize,
        beta: f32,
        alpha: f32,
        threads: Threads,
    ) {
        let parallelism = match threads {
            Threads::Pool => gemm::Parallelism::Rayon(rayon::current_num_threads()),
            Threads::Caller => gemm::Parallelism::None,
        };
        #[allow(unsafe_code)]
        // SAFETY: the checks above bound every element the product reads (`a`, `b`) or writes (`c`)
        // inside its slice; `c` is borrowed mutably, so it aliases neither operand.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                ldc as isize,
                beta != 0.0,
                a.data.as_ptr(),
                a_cs,
                a_rs,
                b.data.as_ptr(),
                b_cs,
                b_rs,
                beta,
                alpha,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

#[cfg(any(feature = "mkl", feature = "accelerate"))]
mod backend {
    use std::ffi::{c_char, c_int};

    use rayon::prelude::*;

    use super::{Threads, View};

    #[cfg(feature = "mkl")]
    pub(super) const NAME: &str = "mkl";
    #[cfg(feature = "mkl")]
    pub(super) const DESCRIPTION: &str = "Intel MKL";
    #[cfg(not(feature = "mkl"))]
    pub(super) const NAME: &str = "accelerate";
    #[cfg(not(feature = "mkl"))]
    pub(super) const DESCRIPTION: &str = "Apple Accelerate";

    extern "C" {
        /// Column-major BLAS `sgemm` (Fortran calling convention), from MKL or Accelerate as
        /// linked by Candle's `mkl` / `accelerate` features.
        fn sgemm_(
            transa: *const c_char,
            transb: *const c_char,
            m: *const c_int,
            n: *const c_int,
            k: *const c_int,
            alpha: *const f32,
            a: *const f32,
            lda: *const c_int,
            b: *const f32,
            ldb: *const c_int,
            beta: *const f32,
            c: *mut f32,
            ldc: *const c_int,
        );
    }

    #[cfg(feature = "mkl")]
    extern "C" {
        /// MKL's thread count for calls from the calling thread (0 restores the global one).
        fn MKL_Set_Num_Threads_Local(nt: c_int) -> c_int;
    }

    /// One single-threaded BLAS call for rows of the output (extents checked by the caller).
    #[allow(clippy::too_many_arguments, unsafe_code)]
    fn call(
        (m, n, k): (usize, usize, usize),
        a: View<'_>,
        b: View<'_>,
        c: &mut [f32],
        ldc: usize,
        beta: f32,
        alpha: f32,
    ) {
        // Row-major C = A B is column-major C^T = B^T A^T: BLAS's first operand is our B. A
        // row-major matrix read as column-major is its transpose, so a non-transposed view is
        // passed as 'N' and a transposed one as 'T'.
        let flag = |v: &View<'_>| {
            if v.trans {
                b'T' as c_char
            } else {
                b'N' as c_char
            }
        };
        let (ta, tb) = (flag(&b), flag(&a));
        let (m_, n_, k_) = (n as c_int, m as c_int, k as c_int);
        let (lda, ldb, ldc_) = (
            b.ld.max(1) as c_int,
            a.ld.max(1) as c_int,
            ldc.max(1) as c_int,
        );
        #[cfg(feature = "mkl")]
        // SAFETY: sets a thread-local MKL setting; no memory is touched.
        let previous = unsafe { MKL_Set_Num_Threads_Local(1) };
        // SAFETY: `matmul::gemm` checked that every element read from `a` and `b` and written to
        // `c` lies inside its slice (the same extents BLAS derives from m, n, k and the leading
        // dimensions); `c` is borrowed mutably, so it aliases neither operand.
        unsafe {
            sgemm_(
                &ta,
                &tb,
                &m_,
                &n_,
                &k_,
                &alpha,
                b.data.as_ptr(),
                &lda,
                a.data.as_ptr(),
                &ldb,
                &beta,
                c.as_mut_ptr(),
                &ldc_,
            );
        }
        #[cfg(feature = "mkl")]
        // SAFETY: as above.
        unsafe {
            MKL_Set_Num_Threads_Local(previous);
        }
    }

    /// The product through BLAS; with [`Threads::Pool`] the output rows are split over rayon.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        (m, n, k): (usize, usize, usize),
        a: View<'_>,
        _: (isize, isize),
        b: View<'_>,
        _: (isize, isize),
        c: &mut [f32],
        ldc: usize,
        beta: f32,
        alpha: f32,
        threads: Threads,
    ) {
        let workers = match threads {
            Threads::Pool => rayon::current_num_threads().min(m).max(1),
            Threads::Caller => 1,
        };
        if workers == 1 || k == 0 {
            call((m, n, k), a, b, c, ldc, beta, alpha);
            return;
        }
        let rows = m.div_ceil(workers);
        // Only the rows of this product: a longer slice would make chunks past the last row.
        let c = &mut c[..(m - 1) * ldc + n];
        c.par_chunks_mut(rows * ldc).enumerate().for_each(|(i, c)| {
            let first = i * rows;
            let count = rows.min(m - first);
            let offset = if a.trans { first } else { first * a.ld };
            let a = View {
                data: &a.data[offset..],
                ..a
            };
            call((count, n, k), a, b, c, ldc, beta, alpha);
        });
    }
}

/// [`gemm`] through the build's own backend, never AMX: the reference the tile product is
/// tested against.
#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
pub(crate) fn reference_gemm(
    (m, n, k): (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    c: &mut [f32],
    ldc: usize,
    beta: f32,
    alpha: f32,
) -> Result<()> {
    let a_strides = a.strides(m, k, "left operand")?;
    let b_strides = b.strides(k, n, "right operand")?;
    backend::gemm(
        (m, n, k),
        a,
        a_strides,
        b,
        b_strides,
        c,
        ldc,
        beta,
        alpha,
        Threads::Caller,
    );
    Ok(())
}

/// `a @ b` (`m x k` times `k x n`) as a new row-major `m x n` matrix.
pub fn product(
    dims: (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    threads: Threads,
) -> Result<Vec<f32>> {
    new_product(dims, a, b, None, threads)
}

/// `a @ b + bias` with `bias` (`n` values) added to every row, as a new row-major `m x n`
/// matrix: a linear layer's output.
pub fn biased_product(
    dims: (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    bias: &[f32],
    threads: Threads,
) -> Result<Vec<f32>> {
    if bias.len() != dims.1 {
        candle_core::bail!(
            "matmul: a bias of {} values for {} output columns",
            bias.len(),
            dims.1
        )
    }
    new_product(dims, a, b, Some(bias), threads)
}

fn new_product(
    (m, n, k): (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    bias: Option<&[f32]>,
    threads: Threads,
) -> Result<Vec<f32>> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if crate::amx::worth((m, n, k), a.trans) && crate::amx::available() {
        a.strides(m, k, "left operand")?;
        b.strides(k, n, "right operand")?;
        // The tiles' write-back stores every element once: no fill first.
        return Ok(crate::amx::fresh((m, n, k), a, b, bias, threads));
    }
    let pool = threads == Threads::Pool;
    let (mut c, beta) = match bias {
        Some(bias) if pool => (crate::pointwise::repeat_rows(bias, m), 1.0),
        Some(bias) => (bias.repeat(m), 1.0),
        None if pool => (crate::pointwise::zeros(m * n), 0.0),
        None => (vec![0f32; m * n], 0.0),
    };
    gemm((m, n, k), a, b, &mut c, n, beta, 1.0, threads)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) * b(p, j)).sum();
            }
        }
        c
    }

    #[test]
    fn products_of_views_match_the_naive_loop() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| bt[j * k + p]);
        let mut c = vec![1f32; m * n];
        gemm(
            (m, n, k),
            View::rows(&a, k),
            View::transposed(&bt, k),
            &mut c,
            n,
            0.0,
            1.0,
            Threads::Caller,
        )
        .unwrap();
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // Accumulate a scaled product into a column block of a wider output.
        let mut wide = vec![1f32; m * (n + 3)];
        gemm(
            (m, n, k),
            View::rows(&a, k),
            View::transposed(&bt, k),
            &mut wide[2..],
            n + 3,
            1.0,
            2.0,
            Threads::Pool,
        )
        .unwrap();
        for i in 0..m {
            for j in 0..n + 3 {
                let expect = if (2..n + 2).contains(&j) {
                    1.0 + 2.0 * want[i * n + j - 2]
                } else {
                    1.0
                };
                assert!((wide[i * (n + 3) + j] - expect).abs() < 1e-5, "({i}, {j})");
            }
        }
    }

    #[test]
    fn biased_products_add_the_bias_to_every_row() {
        // Large enough for AMX where the CPU has it (the output is then written once by the
        // tiles' write-back, with no fill before); rows and columns not multiples of 32.
        let (m, n, k) = (300, 100, 384);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 3.0).collect();
        eprintln!("{m}x{n}x{k} products run on: {}", kernel((m, n, k), false));
        let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| bt[j * k + p]);
        let (a_view, b_view) = (View::rows(&a, k), View::transposed(&bt, k));
        let biased = biased_product((m, n, k), a_view, b_view, &bias, Threads::Pool).unwrap();
        let plain = product((m, n, k), a_view, b_view, Threads::Pool).unwrap();
        for i in 0..m {
            for j in 0..n {
                let (w, at) = (want[i * n + j], i * n + j);
                assert!(
                    (plain[at] - w).abs() < 1e-4,
                    "({i}, {j}): {} vs {w}",
                    plain[at]
                );
                let with_bias = w + bias[j];
                assert!((biased[at] - with_bias).abs() < 1e-4, "({i}, {j})");
            }
        }
        let err = biased_product((m, n, k), a_view, b_view, &bias[1..], Threads::Pool)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a bias of 99 values for 100 output columns"),
            "{err}"
        );
    }

    #[test]
    fn operands_that_do_not_fit_are_an_error() {
        let a = vec![0f32; 10];
        let mut c = vec![0f32; 4];
        let err = gemm(
            (2, 2, 6),
            View::rows(&a, 6),
            View::rows(&a, 2),
            &mut c,
            2,
            0.0,
            1.0,
            Threads::Caller,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("left operand of 2x6"), "{err}");
    }
}
