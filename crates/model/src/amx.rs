//! f32 matrix products on Intel AMX tiles (Xeon Sapphire Rapids and later), to f32 accuracy.
//!
//! AMX multiplies bf16 tiles into f32 accumulators at 16 times the multiply-add rate of AVX-512
//! f32. bf16 alone would give up 16 of f32's 24 significand bits, so each f32 is split into three
//! bf16 pieces, `x = x0 + x1 + x2`, each rounded to nearest (`|x1| <= 2^-8 |x|`,
//! `|x2| <= 2^-16 |x|`), and `a b` is the sum of the six piece products `a_i b_j` with
//! `i + j <= 2`. A product of two bf16 is exact in f32 and the tiles accumulate in f32; the dropped
//! products (`a1 b2`, `a2 b1`, `a2 b2`) are at most about `2^-23 |a b|`, the size of f32's own
//! rounding. The tests hold the error against an f64 reference to that of the `gemm` crate's f32
//! product. A product costs six bf16 tile products: up to 2.7 times the AVX-512 f32 rate.
//!
//! Used by [`crate::matmul`]'s products where `worth` says so (large enough to pay for the
//! packing, a reduction of at most 1536, a row-major left operand), when the CPU has
//! AMX-BF16, Linux grants the process the tile state, and `WICK_AMX=0` is not set. Values beyond
//! bf16's range (above about 3.39e38 in magnitude) and non-finite values come out non-finite,
//! and pieces below f32's normal range are flushed to zero, as AMX does. Each thread keeps its
//! packing buffers between calls: the calling thread the largest packed right operand it has
//! seen (`6 k n` bytes: 3.4 MiB for MiniLM's feed-forward weights, 13.5 MiB for bert-base's),
//! each worker a panel of at most 640 KiB.

use std::arch::asm;
use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::matmul::{Threads, View};

/// bf16 values along the reduction in one tile row (64 bytes).
const TILE_K: usize = 32;
/// Rows of a tile; also the output columns of a tile (16 f32 = 64 bytes).
const TILE_ROWS: usize = 16;
/// The output block of one kernel call: 2 x 2 tiles.
const BLOCK: usize = 2 * TILE_ROWS;
/// bf16 pieces per f32.
const PIECES: usize = 3;
/// Bytes of one tile and of one k-block's three piece tiles.
const TILE_BYTES: usize = 1024;
const KBLOCK_BYTES: usize = PIECES * TILE_BYTES;
/// The longest reduction the tiles take. Beyond it the panels of rows that fit the L2 cache get
/// thin and each re-reads the whole packed right operand: a square 2048 product ran at 317
/// GFLOP/s against 343 for the `gemm` crate, a 384 x 1536 weight gradient over 4096 tokens at
/// 196 against 272.
pub(crate) const MAX_K: usize = 1536;
/// k-blocks per pass over a panel's rows: the right operand's tiles of a pass (2 x 4 x 3 KiB)
/// stay in the L1 cache.
const KBLOCKS_PER_PASS: usize = 4;
/// Bytes of packed left operand a task aims to keep in the L2 cache.
const PANEL_BYTES: usize = 640 << 10;

/// One 16 x 32 bf16 tile (or 16 x 16 pairs in the right operand's layout), 64-byte aligned as
/// tile loads want.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Tile([u16; TILE_ROWS * TILE_K]);

const ZERO_TILE: Tile = Tile([0; TILE_ROWS * TILE_K]);

/// The 64-byte tile configuration `ldtilecfg` reads.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Whether products run on AMX here: the CPU has AMX-BF16, the kernel granted this process the
/// tile state, and `WICK_AMX=0` is not set. Decided once.
pub fn available() -> bool {
    status().is_ok()
}

/// [`available`], or why not.
pub fn status() -> Result<(), &'static str> {
    static STATUS: std::sync::OnceLock<Result<(), &'static str>> = std::sync::OnceLock::new();
    *STATUS.get_or_init(|| {
        if std::env::var("WICK_AMX").as_deref() == Ok("0") {
            return Err("turned off by WICK_AMX=0");
        }
        supported()
    })
}

/// AMX-BF16 and AVX512-BF16 on this CPU and the tile state granted by Linux
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), or which is missing.
pub fn supported() -> Result<(), &'static str> {
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE (the standard library's
    // detection of these is not stable yet).
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return Err("the CPU has no AMX-BF16");
    }
    // The packing splits values with AVX512-BF16 (every CPU with AMX has it).
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16")) {
        return Err("the CPU has no AVX512-BF16");
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    #[allow(unsafe_code)]
    // SAFETY: a request for a process permission; it reads and writes no memory of ours.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if granted == 0 {
        Ok(())
    } else {
        Err("the kernel did not grant the AMX tile state")
    }
}

/// Whether a `m x k` by `k x n` product is large enough for the tiles to beat the `gemm` crate
/// after packing both operands (at least 2^21 multiply-adds, 32 rows and columns), its
/// reduction short enough (32 to [`MAX_K`]), and its left operand stored row by row. A
/// transposed left operand (a weight gradient, `g^T x`) is packed through a transposition that
/// costs about as much as its share of the products: 261 against 270 to 298 GFLOP/s for the
/// `gemm` crate on MiniLM's weight gradients over 1024 tokens.
pub(crate) fn worth((m, n, k): (usize, usize, usize), left_transposed: bool) -> bool {
    !left_transposed
        && m >= BLOCK
        && n >= BLOCK
        && (TILE_K..=MAX_K).contains(&k)
        && m * n * k >= 1 << 21
}

/// `c = beta * c + alpha * a @ b` (`beta` 0 or 1) on AMX tiles; extents checked by the caller
/// and [`available`] true. The right operand is packed once (in parallel with
/// [`Threads::Pool`]); then each task packs a panel of rows of `a` and computes those rows of
/// `c`. Every output element is one kernel's sum over all of `k`, whatever the thread count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    c: &mut [f32],
    ldc: usize,
    beta: f32,
    alpha: f32,
    threads: Threads,
) {
    let c = &mut c[..(m - 1) * ldc + n];
    if beta == 0.0 {
        tile_gemm(
            (m, n, k),
            a,
            b,
            c,
            ldc,
            threads,
            |d: &mut [f32], s: &[f32], _| d.iter_mut().zip(s).for_each(|(d, s)| *d = alpha * s),
        );
    } else {
        tile_gemm(
            (m, n, k),
            a,
            b,
            c,
            ldc,
            threads,
            |d: &mut [f32], s: &[f32], _| d.iter_mut().zip(s).for_each(|(d, s)| *d += alpha * s),
        );
    }
}

/// `a @ b` plus `bias` (one value per column; none: zero) as a new row-major `m x n` matrix,
/// every element written once by the kernels' write-back (no zero or bias fill before); `k` at
/// most [`MAX_K`].
pub(crate) fn fresh(
    (m, n, k): (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    bias: Option<&[f32]>,
    threads: Threads,
) -> Vec<f32> {
    assert!(worth((m, n, k), a.trans) && bias.is_none_or(|b| b.len() == n));
    let mut out = Vec::with_capacity(m * n);
    let slots = &mut out.spare_capacity_mut()[..m * n];
    let write = |d: &mut [MaybeUninit<f32>], s: &[f32], col: usize| match bias {
        Some(bias) => d
            .iter_mut()
            .zip(s)
            .zip(&bias[col..])
            .for_each(|((d, s), b)| {
                d.write(s + b);
            }),
        None => d.iter_mut().zip(s).for_each(|(d, &s)| {
            d.write(s);
        }),
    };
    tile_gemm((m, n, k), a, b, slots, n, threads, write);
    #[allow(unsafe_code)]
    // SAFETY: with `ldc == n` the `m x n` output is the whole of `slots`, and `panel_task`
    // writes every element of it: every row of its panel, for every block of columns.
    unsafe {
        out.set_len(m * n)
    };
    out
}

/// The product into `c`, storing each output row segment with `store(destination, product
/// values, first column)`.
fn tile_gemm<T: Send>(
    (m, n, k): (usize, usize, usize),
    a: View<'_>,
    b: View<'_>,
    c: &mut [T],
    ldc: usize,
    threads: Threads,
    store: impl Fn(&mut [T], &[f32], usize) + Sync,
) {
    let kblocks = k.div_ceil(TILE_K);
    let per_block = kblocks * PIECES;
    let tiles = n.div_ceil(BLOCK) * 2 * per_block;
    let rows = panel_rows(kblocks);
    with_buffer(&PACKED, tiles, |packed| {
        #[allow(unsafe_code)]
        // SAFETY: `available()` checked that the CPU has AVX512-BF16 (and AVX-512 F/BW/VL).
        let pack = |(block, t): (usize, &mut [Tile])| unsafe { pack_right(b, (n, k), block, t) };
        match threads {
            Threads::Pool => packed.par_chunks_mut(per_block).enumerate().for_each(pack),
            Threads::Caller => packed.chunks_mut(per_block).enumerate().for_each(pack),
        }
        let packed = &*packed;
        let task = |(i, c): (usize, &mut [T])| {
            let first = i * rows;
            let shape = (first, rows.min(m - first), n, k);
            #[allow(unsafe_code)]
            // SAFETY: `available()` checked that the CPU has AVX512-BF16 (and AVX-512 F/BW/VL).
            unsafe {
                panel_task(shape, a, packed, c, ldc, &store)
            };
        };
        match threads {
            Threads::Pool => c.par_chunks_mut(rows * ldc).enumerate().for_each(task),
            Threads::Caller => c.chunks_mut(rows * ldc).enumerate().for_each(task),
        }
    });
}

/// Rows `first .. first + count` of the product into `c` (those rows, leading dimension `ldc`):
/// packs them from `a` into this thread's panel, then runs the kernel for every 32 x 32 block
/// and stores each of its rows: every column `< n` of every one of the `count` rows. Compiled
/// for AVX-512 so that `store` (inlined) writes 16 values at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn panel_task<T>(
    (first, count, n, k): (usize, usize, usize, usize),
    a: View<'_>,
    packed: &[Tile],
    c: &mut [T],
    ldc: usize,
    store: &impl Fn(&mut [T], &[f32], usize),
) {
    let per_block = k.div_ceil(TILE_K) * PIECES;
    let pair = 2 * per_block;
    with_buffer(&PANEL, count.div_ceil(BLOCK) * pair, |panel| {
        pack_left(a, (first, count, k), panel);
        let tiles = TileState::load();
        let kblocks = per_block / PIECES;
        // Per block of 32 rows, its sums over the k-blocks done so far.
        let mut partial = vec![Block([0.0; BLOCK * BLOCK]); count.div_ceil(BLOCK)];
        for (nb, right) in packed.chunks_exact(pair).enumerate() {
            let col = nb * BLOCK;
            let cols = BLOCK.min(n - col);
            // A few k-blocks of this pair of column blocks (24 KiB) stay in L1 while every block
            // of rows uses them; the rows' tiles stream from L2.
            for first_kb in (0..kblocks).step_by(KBLOCKS_PER_PASS) {
                let kbs = first_kb..(first_kb + KBLOCKS_PER_PASS).min(kblocks);
                let last = kbs.end == kblocks;
                for (mb, (left, sums)) in panel.chunks_exact(pair).zip(&mut partial).enumerate() {
                    tiles.product(left, right, kbs.clone(), first_kb > 0, sums);
                    if !last {
                        continue;
                    }
                    for (i, src) in sums
                        .0
                        .chunks_exact(BLOCK)
                        .take(count - mb * BLOCK)
                        .enumerate()
                    {
                        store(
                            &mut c[(mb * BLOCK + i) * ldc + col..][..cols],
                            &src[..cols],
                            col,
                        );
                    }
                }
            }
        }
    });
}

/// A 32 x 32 f32 output block, 64-byte aligned for tile stores.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block([f32; BLOCK * BLOCK]);

/// This thread's tile configuration, loaded for the lifetime of the value and released (the
/// tile state returned to its initial, cheap-to-switch state) when dropped.
struct TileState(());

impl TileState {
    fn load() -> Self {
        // Palette 1 has eight tiles; the entries of the other eight must be zero.
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        config.colsb[..8].fill((TILE_K * 2) as u16);
        config.rows[..8].fill(TILE_ROWS as u8);
        #[allow(unsafe_code)]
        // SAFETY: `available()` established that the CPU has AMX and that the process may use
        // the tile state; the instruction reads the 64-byte configuration it is given.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
        }
        Self(())
    }

    /// `out = left @ right` over the k-blocks `kbs` for one 32 x 32 block, plus `out` itself if
    /// `resume` (the sums of the k-blocks before): `left` holds two 16-row blocks and `right`
    /// two 16-column blocks, each `k-blocks x pieces` tiles as packed by [`pack_left`] and
    /// [`pack_right`]. Per k-block the six piece products accumulate into four f32 tiles
    /// (tmm0..3), with the left pieces in tmm4/5 and the right in tmm6/7. Stored and reloaded
    /// f32 sums are exact, so the result does not depend on how the k-blocks are split.
    fn product(
        &self,
        left: &[Tile],
        right: &[Tile],
        kbs: std::ops::Range<usize>,
        resume: bool,
        out: &mut Block,
    ) {
        let per_block = left.len() / 2;
        assert!(per_block.is_multiple_of(PIECES) && right.len() == left.len());
        assert!(kbs.end <= per_block / PIECES);
        let o = out.0.as_mut_ptr();
        let row_bytes = BLOCK * 4;
        let (a0, a1) = left.split_at(per_block);
        let (b0, b1) = right.split_at(per_block);
        let stride = TILE_K * 2;
        #[allow(unsafe_code)]
        // SAFETY: the tile configuration is loaded (`self`); every operand load reads one 1 KiB
        // tile (16 rows of `stride` bytes) at offset `kb * 3 KiB + piece * 1 KiB` of a slice of
        // `k-blocks * 3` tiles with `kb < k-blocks`, so inside it; the loads and stores of the
        // sums read and write the four 1 KiB quarters of `out` (16 rows of 128 bytes each).
        unsafe {
            if resume {
                asm!(
                    "tileloadd tmm0, [{o} + {s}*1]",
                    "tileloadd tmm1, [{o} + {s}*1 + 64]",
                    "tileloadd tmm2, [{o} + {s}*1 + 2048]",
                    "tileloadd tmm3, [{o} + {s}*1 + 2112]",
                    o = in(reg) o,
                    s = in(reg) row_bytes,
                    options(nostack, readonly)
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            for kb in kbs {
                let at = kb * PIECES;
                asm!(
                    // a0 with b0, b1, b2
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm6, [{b0} + {s}*1 + 1024]",
                    "tileloadd tmm7, [{b1} + {s}*1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm6, [{b0} + {s}*1 + 2048]",
                    "tileloadd tmm7, [{b1} + {s}*1 + 2048]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    // a1 with b0, b1
                    "tileloadd tmm4, [{a0} + {s}*1 + 1024]",
                    "tileloadd tmm5, [{a1} + {s}*1 + 1024]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm6, [{b0} + {s}*1 + 1024]",
                    "tileloadd tmm7, [{b1} + {s}*1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    // a2 with b0
                    "tileloadd tmm4, [{a0} + {s}*1 + 2048]",
                    "tileloadd tmm5, [{a1} + {s}*1 + 2048]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.as_ptr().add(at),
                    a1 = in(reg) a1.as_ptr().add(at),
                    b0 = in(reg) b0.as_ptr().add(at),
                    b1 = in(reg) b1.as_ptr().add(at),
                    s = in(reg) stride,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{o} + {s}*1], tmm0",
                "tilestored [{o} + {s}*1 + 64], tmm1",
                "tilestored [{o} + {s}*1 + 2048], tmm2",
                "tilestored [{o} + {s}*1 + 2112], tmm3",
                o = in(reg) o,
                s = in(reg) row_bytes,
                options(nostack)
            );
        }
    }
}

impl Drop for TileState {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: returns this thread's tile registers and configuration to their initial state;
        // no tile value is used after this.
        unsafe {
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// Runs `f` on the first `tiles` tiles of this thread's buffer in `key` (grown as needed), or of
/// a fresh one if that buffer is in use.
fn with_buffer(
    key: &'static std::thread::LocalKey<RefCell<Vec<Tile>>>,
    tiles: usize,
    f: impl FnOnce(&mut [Tile]),
) {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < tiles {
                buffer.resize(tiles, ZERO_TILE);
            }
            f(&mut buffer[..tiles])
        }
        Err(_) => f(&mut vec![ZERO_TILE; tiles]),
    })
}

thread_local! {
    /// The packed right operand of the calling thread's product, kept between calls.
    static PACKED: RefCell<Vec<Tile>> = const { RefCell::new(Vec::new()) };
    /// The packed left panel of the task a thread runs, kept between tasks.
    static PANEL: RefCell<Vec<Tile>> = const { RefCell::new(Vec::new()) };
}

/// Rows of the left operand per task: a multiple of [`BLOCK`] whose packed panel fits
/// [`PANEL_BYTES`], between one block and 256 rows.
fn panel_rows(kblocks: usize) -> usize {
    let per_row = kblocks * KBLOCK_BYTES / TILE_ROWS;
    (PANEL_BYTES / per_row / BLOCK * BLOCK).clamp(BLOCK, 256)
}

/// The nearest bf16 (ties to even), as its bits; NaN stays NaN. The scalar reference for
/// [`split_run`].
#[cfg(test)]
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0x7fc0
    } else {
        rounded
    }
}

#[cfg(test)]
fn widen(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `x` as three bf16 pieces whose sum is `x` to within f32 rounding.
#[cfg(test)]
fn split(x: f32) -> [u16; PIECES] {
    let x0 = bf16(x);
    let r = x - widen(x0);
    let x1 = bf16(r);
    [x0, x1, bf16(r - widen(x1))]
}

/// Splits `N` values (a multiple of 16) into their pieces, 16 at a time with AVX512-BF16's
/// `vcvtneps2bf16` (round to nearest even, as [`split`]; it also flushes values below f32's
/// normal range to zero).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
fn split_run<const N: usize>(run: &[f32; N], out: &mut [[u16; N]; PIECES]) {
    use std::arch::x86_64::*;
    const { assert!(N.is_multiple_of(16)) };
    #[allow(unsafe_code)]
    // SAFETY: `__m256bh` and `__m256i` are both 16 packed 16-bit values.
    let bits = |h: __m256bh| unsafe { std::mem::transmute::<__m256bh, __m256i>(h) };
    // bf16 bits in the high half of each f32.
    let widen = |h| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits(h))));
    for c in 0..N / 16 {
        #[allow(unsafe_code)]
        // SAFETY: `c * 16 + 16 <= N`: the load reads 16 values of `run`, each store writes 16
        // of a piece.
        unsafe {
            let x = _mm512_loadu_ps(run.as_ptr().add(c * 16));
            let x0 = _mm512_cvtneps_pbh(x);
            let r = _mm512_sub_ps(x, widen(x0));
            let x1 = _mm512_cvtneps_pbh(r);
            let x2 = _mm512_cvtneps_pbh(_mm512_sub_ps(r, widen(x1)));
            for (piece, h) in out.iter_mut().zip([x0, x1, x2]) {
                _mm256_storeu_si256(piece.as_mut_ptr().add(c * 16).cast(), bits(h));
            }
        }
    }
}

/// `width` contiguous values of `data` from `at`, zero-padded to `N` (`at` is not read when
/// `width` is 0: it may lie past the end).
#[inline(always)]
fn load<const N: usize>(data: &[f32], at: usize, width: usize) -> [f32; N] {
    if width == N {
        // A fixed-size copy: inlined, where a slice copy of run-time length calls memmove.
        return *<&[f32; N]>::try_from(&data[at..at + N]).expect("N values");
    }
    let mut run = [0f32; N];
    if width > 0 {
        run[..width].copy_from_slice(&data[at..at + width]);
    }
    run
}

/// Packs columns `16 block ..` of the `k x n` right operand `b` into `tiles` (one per k-block
/// and piece, in that order), each in AMX's pair layout: element `(2 r + q, j)` of the tile
/// at `r * 32 + 2 j + q`. Columns and rows past the matrix are zero.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn pack_right(b: View<'_>, shape: (usize, usize), block: usize, tiles: &mut [Tile]) {
    let (n, k) = shape;
    let first = block * TILE_ROWS;
    let cols = TILE_ROWS.min(n.saturating_sub(first));
    for (kb, out) in tiles.chunks_exact_mut(PIECES).enumerate() {
        let k0 = kb * TILE_K;
        let width = TILE_K.min(k - k0);
        if b.trans {
            // Column j of b is contiguous: split it along k, then deal the pairs out.
            let mut pieces = [[0; TILE_K]; PIECES];
            for t in out.iter_mut() {
                *t = ZERO_TILE;
            }
            for j in 0..cols {
                let run: [f32; TILE_K] = load(b.data, (first + j) * b.ld + k0, width);
                split_run(&run, &mut pieces);
                for (tile, piece) in out.iter_mut().zip(&pieces) {
                    for r in 0..TILE_K / 2 {
                        tile.0[r * TILE_K + 2 * j] = piece[2 * r];
                        tile.0[r * TILE_K + 2 * j + 1] = piece[2 * r + 1];
                    }
                }
            }
        } else {
            // Rows of b are contiguous: split rows 2r and 2r + 1, then interleave them.
            let (mut even, mut odd) = ([[0; TILE_ROWS]; PIECES], [[0; TILE_ROWS]; PIECES]);
            for r in 0..TILE_K / 2 {
                for (q, pieces) in [&mut even, &mut odd].into_iter().enumerate() {
                    let p = 2 * r + q;
                    let run: [f32; TILE_ROWS] = if p < width {
                        load(b.data, (k0 + p) * b.ld + first, cols)
                    } else {
                        [0.0; TILE_ROWS]
                    };
                    split_run(&run, pieces);
                }
                for ((tile, e), o) in out.iter_mut().zip(&even).zip(&odd) {
                    let row = &mut tile.0[r * TILE_K..(r + 1) * TILE_K];
                    for j in 0..TILE_ROWS {
                        row[2 * j] = e[j];
                        row[2 * j + 1] = o[j];
                    }
                }
            }
        }
    }
}

/// Packs rows `first .. first + count` of the `m x k` left operand `a` into `tiles`: for each
/// 16-row block, per k-block, its three piece tiles (element `(i, p)` at `i * 32 + p`). Rows
/// past `count` (up to a multiple of 32) and columns past `k` are zero.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn pack_left(a: View<'_>, rows: (usize, usize, usize), tiles: &mut [Tile]) {
    let (first, count, k) = rows;
    let kblocks = k.div_ceil(TILE_K);
    for (rb, blocks) in tiles.chunks_exact_mut(kblocks * PIECES).enumerate() {
        let r0 = rb * TILE_ROWS;
        let valid = TILE_ROWS.min(count.saturating_sub(r0));
        for (kb, out) in blocks.chunks_exact_mut(PIECES).enumerate() {
            let k0 = kb * TILE_K;
            let width = TILE_K.min(k - k0);
            if a.trans {
                // Column p of a is contiguous along the rows: split 16 rows of each of the
                // 32 columns, then transpose the pieces into the tiles.
                let mut pieces = [[0; TILE_ROWS]; PIECES];
                for p in 0..TILE_K {
                    let run: [f32; TILE_ROWS] = if p < width {
                        load(a.data, (k0 + p) * a.ld + first + r0, valid)
                    } else {
                        [0.0; TILE_ROWS]
                    };
                    split_run(&run, &mut pieces);
                    for (tile, piece) in out.iter_mut().zip(&pieces) {
                        for (i, &x) in piece.iter().enumerate() {
                            tile.0[i * TILE_K + p] = x;
                        }
                    }
                }
            } else {
                let mut pieces = [[0; TILE_K]; PIECES];
                for i in 0..TILE_ROWS {
                    let run: [f32; TILE_K] = if i < valid {
                        load(a.data, (first + r0 + i) * a.ld + k0, width)
                    } else {
                        [0.0; TILE_K]
                    };
                    split_run(&run, &mut pieces);
                    for (tile, piece) in out.iter_mut().zip(&pieces) {
                        tile.0[i * TILE_K..(i + 1) * TILE_K].copy_from_slice(piece);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded values spread over several orders of magnitude, both signs.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                unit * 2f32.powi((state % 7) as i32 - 3)
            })
            .collect()
    }

    fn element(v: &View<'_>, i: usize, j: usize) -> f32 {
        if v.trans {
            v.data[j * v.ld + i]
        } else {
            v.data[i * v.ld + j]
        }
    }

    /// The largest error of `c` against the f64 product, relative to the largest `|a| |b|` sum
    /// of its row and column (the scale f32 rounding errors are measured on).
    fn error(
        (m, n, k): (usize, usize, usize),
        a: &View<'_>,
        b: &View<'_>,
        c: &[f32],
        ldc: usize,
        base: &[f32],
        (beta, alpha): (f32, f32),
    ) -> f64 {
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut scale) = (0f64, 0f64);
                for p in 0..k {
                    let term = f64::from(element(a, i, p)) * f64::from(element(b, p, j));
                    exact += term;
                    scale += term.abs();
                }
                let want =
                    f64::from(beta) * f64::from(base[i * ldc + j]) + f64::from(alpha) * exact;
                let got = f64::from(c[i * ldc + j]);
                worst = worst.max((got - want).abs() / scale.max(f64::MIN_POSITIVE));
            }
        }
        worst
    }

    #[test]
    fn tile_products_are_as_accurate_as_f32_products() {
        if !available() {
            eprintln!("AMX not available on this machine: the tile product is not tested here");
            return;
        }
        // Edges in every dimension (rows, columns and k not multiples of 32), both operand
        // layouts, overwrite and accumulate.
        let cases = [
            (37, 45, 70, false, true, 0.0, 1.0, Threads::Caller),
            (300, 64, 384, false, true, 1.0, 1.0, Threads::Pool),
            (64, 96, 200, true, false, 1.0, 2.0, Threads::Pool),
            (33, 129, 31 + 32, true, true, 0.0, -1.0, Threads::Caller),
            // The longest reduction, not a multiple of 32.
            (40, 48, MAX_K - 20, false, false, 1.0, 1.0, Threads::Pool),
        ];
        for (seed, &(m, n, k, at, bt, beta, alpha, threads)) in cases.iter().enumerate() {
            let a_data = values(m * k, seed as u64 * 3 + 1);
            let b_data = values(k * n, seed as u64 * 3 + 2);
            let a = if at {
                View::transposed(&a_data, m)
            } else {
                View::rows(&a_data, k)
            };
            let b = if bt {
                View::transposed(&b_data, k)
            } else {
                View::rows(&b_data, n)
            };
            let ldc = n + 3;
            let base = values(m * ldc, seed as u64 * 3 + 3);
            let mut tiles = base.clone();
            gemm((m, n, k), a, b, &mut tiles, ldc, beta, alpha, threads);
            // Columns past n are not written.
            for i in 0..m {
                assert_eq!(
                    &tiles[i * ldc + n..i * ldc + ldc],
                    &base[i * ldc + n..i * ldc + ldc]
                );
            }
            let mut reference = base.clone();
            crate::matmul::reference_gemm((m, n, k), a, b, &mut reference, ldc, beta, alpha)
                .unwrap();
            let (shape, scale) = ((m, n, k), (beta, alpha));
            let tile_error = error(shape, &a, &b, &tiles, ldc, &base, scale);
            let f32_error = error(shape, &a, &b, &reference, ldc, &base, scale);
            assert!(
                tile_error <= 2.0 * f32_error + 1e-7,
                "case {seed}: tiles {tile_error:e} vs f32 {f32_error:e}"
            );
        }
    }

    #[test]
    fn split_pieces_sum_to_the_value() {
        for x in values(10_000, 9) {
            let [x0, x1, x2] = split(x);
            let sum = f64::from(widen(x0)) + f64::from(widen(x1)) + f64::from(widen(x2));
            assert!(
                (sum - f64::from(x)).abs() <= f64::from(x.abs()) * 2f64.powi(-24),
                "{x}"
            );
        }
        assert!(widen(split(f32::NAN)[0]).is_nan());
    }

    #[test]
    fn vector_split_matches_the_scalar_split() {
        if !available() {
            eprintln!("AMX not available on this machine: the vector split is not tested here");
            return;
        }
        let mut xs = values(32, 11);
        xs[3] = f32::NAN;
        xs[4] = 0.0;
        let run: [f32; 32] = xs.clone().try_into().unwrap();
        let mut pieces = [[0u16; 32]; PIECES];
        #[allow(unsafe_code)]
        // SAFETY: `available()` checked AVX512-BF16.
        unsafe {
            split_run(&run, &mut pieces)
        };
        for (p, &x) in xs.iter().enumerate() {
            let got = [pieces[0][p], pieces[1][p], pieces[2][p]];
            if x.is_nan() {
                assert!(widen(got[0]).is_nan());
            } else {
                assert_eq!(got, split(x), "{x}");
            }
        }
    }
}
