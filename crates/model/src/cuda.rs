//! wick's CUDA path (`kernels/wick.cu`, compiled to PTX by `build.rs` when the `cuda` feature is
//! on): one-pass kernels with their backward for dropout + residual + layer norm, the attention
//! probabilities (scale, mask, softmax and dropout in one pass), exact GELU, dropout and the
//! embedding sum; each linear layer ([`linear`]) and each attention block with its projections
//! ([`self_attention`]) as one graph node whose products run on detached tensors (cuBLAS through
//! Candle); and AdamW and the gradient norm for the trainer ([`optim`]).
//!
//! Written from primitive ops, each of these is a handful of Candle kernels forward and several
//! times that backward, where Candle also adds every input gradient into a freshly zeroed buffer;
//! on a GPU most of a BERT training step went to those small kernels and their launches (an H100
//! profile of the MiniLM step: 3,524 kernels, 57 ms, of which 8 ms matrix products). Activations
//! are f32, bf16 or f16; parameters, statistics and parameter gradients f32. Dropout masks are
//! counter-based and the same as the CPU's for the same key ([`crate::simd::keep_hash`]), so a
//! CUDA run draws the CPU run's masks; reductions run in a fixed order (no atomics).
//! [`crate::fused::without_fused`] turns these off too (primitive ops everywhere). The GPU tests
//! compare every op with the CPU, forward and gradients.
//!
//! Without the `cuda` feature [`applies`] is always false and nothing here is reachable.

use candle_core::{DType, Result, Tensor};

/// Whether the CUDA kernels apply: every tensor on a CUDA device in f32, bf16 or f16 (the
/// embedding ids excepted: see the op), unless [`crate::fused::without_fused`] is in force.
pub fn applies(tensors: &[&Tensor]) -> bool {
    cfg!(feature = "cuda")
        && !crate::fused::disabled()
        && tensors.iter().all(|t| {
            t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
        })
}

/// The widest row (hidden size, or keys per attention row) the row kernels take.
pub const MAX_ROW: usize = 1024;

pub use imp::*;

#[cfg(not(feature = "cuda"))]
mod imp {
    //! Without the feature: the same signatures, never reached because [`super::applies`] is
    //! false.
    use super::*;

    /// Nothing to set up without CUDA.
    pub fn configure(_device: &candle_core::Device) -> Result<()> {
        Ok(())
    }

    fn not_built<T>() -> Result<T> {
        candle_core::bail!("wick was built without the `cuda` feature")
    }

    pub fn residual_layer_norm(
        _a: &Tensor,
        _x: Option<&Tensor>,
        _w: &Tensor,
        _b: &Tensor,
        _eps: f64,
        _dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        not_built()
    }

    pub fn attention_probs(
        _scores: &Tensor,
        _bias: &Tensor,
        _scale: f64,
        _dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        not_built()
    }

    pub fn gelu(_xs: &Tensor) -> Result<Tensor> {
        not_built()
    }

    pub fn dropout(_xs: &Tensor, _p: f64, _key: u64) -> Result<Tensor> {
        not_built()
    }

    pub fn embeddings(_tables: [&Tensor; 3], _ids: [&Tensor; 3]) -> Result<Tensor> {
        not_built()
    }

    pub fn linear(_x: &Tensor, _w: &Tensor, _b: &Tensor, _gelu: bool) -> Result<Tensor> {
        not_built()
    }

    pub mod optim {
        use super::*;

        #[allow(clippy::too_many_arguments)]
        pub fn adamw(
            _param: &Tensor,
            _grad: &Tensor,
            _moments: (&Tensor, &Tensor),
            _scale: (&Tensor, Option<&Tensor>),
            _betas: (f32, f32),
            _decay: f32,
            _step: f32,
            _inv_bias2_sqrt: f32,
            _eps: f32,
        ) -> Result<()> {
            not_built()
        }

        pub fn sum_of_squares(_tensors: &[&Tensor]) -> Result<Tensor> {
            not_built()
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn self_attention(
        _x: &Tensor,
        _weights: [&Tensor; 3],
        _biases: [&Tensor; 3],
        _bias: &Tensor,
        _position: Option<&Tensor>,
        _heads: usize,
        _scale: f64,
        _dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        not_built()
    }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod imp {
    use super::*;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Storage};

    use crate::simd;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/wick_kernels.ptx"));
    const MODULE: &str = "wick";
    /// Threads per block of the row kernels (8 warps: 8 rows).
    const ROW_BLOCK: u32 = 256;
    /// Rows each warp of a layer-norm backward takes (its partial weight and bias sums).
    const LN_BWD_ROWS: usize = 2;

    /// Sets a CUDA device up for a training loop that runs on its one stream: cudarc's
    /// per-tensor event tracking off (for tensors created afterwards: the events, recorded and
    /// waited on around every launch, order nothing the stream does not order already, and cost
    /// host time at each of the thousand launches of a step), and the memory pool that Candle's
    /// stream-ordered allocations come from told to keep freed memory (its default returns it to
    /// the driver at every synchronization, so each step mapped its memory afresh). Where the
    /// driver has no memory pools, it warns on stderr and goes on.
    pub fn configure(device: &candle_core::Device) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let candle_core::Device::Cuda(cuda) = device else {
            return Ok(());
        };
        // SAFETY: wick uses only the device's own stream (no tensor is shared across streams),
        // the condition Candle documents for this call.
        unsafe { cuda.disable_event_tracking() };
        let stream = cuda.cuda_stream();
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut keep = u64::MAX;
        // SAFETY: plain driver calls with valid out-pointers for the context's own device.
        let kept = unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, stream.context().cu_device())
                .result()
                .and_then(|()| {
                    sys::cuMemPoolSetAttribute(
                        pool,
                        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                        (&mut keep as *mut u64).cast(),
                    )
                    .result()
                })
        };
        if let Err(err) = kept {
            // A driver without memory pools allocates synchronously anyway: say so and go on.
            eprintln!(
                "warning: the CUDA memory pool cannot keep freed memory ({err:?}); each step may \
                 map its memory afresh"
            );
        }
        Ok(())
    }

    /// The register width of the row kernels for rows of `n` values: the smallest compiled one
    /// with `32 * width >= n`.
    fn width(n: usize, what: &str) -> Result<usize> {
        [1, 2, 4, 8, 12, 16, 24, 32]
            .into_iter()
            .find(|k| 32 * k >= n)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "wick cuda kernels: {what} of {n} values (at most {MAX_ROW})"
                ))
            })
    }

    fn suffix(dtype: DType) -> Result<&'static str> {
        Ok(match dtype {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            other => candle_core::bail!("wick cuda kernels: no {} version", other.as_str()),
        })
    }

    /// The device address of element `offset` of a storage.
    fn address(storage: &CudaStorage, offset: usize) -> Result<u64> {
        let stream = storage.device.cuda_stream();
        let (base, size) = match &storage.slice {
            CudaStorageSlice::F32(s) => (s.device_ptr(&stream).0, 4),
            CudaStorageSlice::BF16(s) => (s.device_ptr(&stream).0, 2),
            CudaStorageSlice::F16(s) => (s.device_ptr(&stream).0, 2),
            CudaStorageSlice::U32(s) => (s.device_ptr(&stream).0, 4),
            _ => candle_core::bail!("wick cuda kernels: unsupported dtype {:?}", storage.dtype()),
        };
        Ok(base + (offset * size) as u64)
    }

    /// A contiguous input: its address, element count and dtype.
    struct Input {
        ptr: u64,
        len: usize,
        dtype: DType,
    }

    fn input(storage: &CudaStorage, layout: &Layout, what: &str) -> Result<Input> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("wick cuda kernel: {what} is not contiguous"))
        })?;
        Ok(Input {
            ptr: address(storage, start)?,
            len: end - start,
            dtype: storage.dtype(),
        })
    }

    /// Runs `f` on the device storage of `t` (made contiguous first).
    fn with_input<R>(
        t: &Tensor,
        what: &str,
        f: impl FnOnce(&CudaStorage, Input) -> Result<R>,
    ) -> Result<R> {
        let t = t.detach().contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        match &*storage {
            Storage::Cuda(cuda) => {
                let inp = input(cuda, layout, what)?;
                f(cuda, inp)
            }
            _ => candle_core::bail!("wick cuda kernel: {what} is not on a CUDA device"),
        }
    }

    /// A fresh, uninitialised buffer of `len` elements; every kernel here writes all of it.
    fn alloc(dev: &CudaDevice, dtype: DType, len: usize) -> Result<CudaStorage> {
        // SAFETY: the buffers are written in full by the kernel launched right after.
        let storage = unsafe {
            match dtype {
                DType::F32 => CudaStorage::wrap_cuda_slice(dev.alloc::<f32>(len)?, dev.clone()),
                DType::BF16 => {
                    CudaStorage::wrap_cuda_slice(dev.alloc::<half::bf16>(len)?, dev.clone())
                }
                DType::F16 => {
                    CudaStorage::wrap_cuda_slice(dev.alloc::<half::f16>(len)?, dev.clone())
                }
                other => candle_core::bail!("wick cuda kernels: no {} buffers", other.as_str()),
            }
        };
        Ok(storage)
    }

    /// A tensor outside the graph over a storage the kernels wrote.
    fn tensor(storage: CudaStorage, shape: &Shape) -> Tensor {
        Tensor::from_storage(
            Storage::Cuda(storage),
            shape.clone(),
            BackpropOp::none(),
            false,
        )
    }

    /// Launches `name` from wick's module with these arguments (each an address, or a scalar of
    /// the kernel's parameter type).
    macro_rules! launch {
        ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
            let func = $dev.get_or_load_custom_func(&$name, MODULE, PTX)?;
            let mut builder = func.builder();
            $( let arg = $arg; builder.arg(&arg); )*
            // SAFETY: the argument list matches the kernel's signature in wick.cu, and every
            // address points into a live buffer of the sizes passed alongside.
            unsafe { builder.launch($cfg) }.w()?;
        }};
    }

    /// The `cpu_fwd` of an op that runs only on CUDA (the dispatch never sends it CPU tensors):
    /// `cuda_only!("message", s1 l1, s2 l2)` for an op of two inputs.
    macro_rules! cuda_only {
        ($what:literal, $($storage:ident $layout:ident),+) => {
            #[allow(unused_variables)]
            fn cpu_fwd(
                &self,
                $($storage: &candle_core::CpuStorage, $layout: &Layout),+
            ) -> Result<(candle_core::CpuStorage, Shape)> {
                candle_core::bail!($what)
            }
        };
    }

    /// Takes what an op's forward computed before the op ran (its products on detached tensors).
    fn take_stashed(slot: &std::sync::Mutex<Option<Tensor>>, op: &str) -> Result<Tensor> {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: forward ran twice")))
    }

    fn rows_config(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(ROW_BLOCK / 32), 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn elementwise_config(n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 132 * 16) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// A dropout mask's kernel arguments: key halves, threshold, keep scale, on.
    #[derive(Debug, Clone, Copy)]
    struct DropMask(Option<simd::Mask>);

    impl DropMask {
        fn new(dropout: Option<(f64, u64)>) -> Self {
            Self(
                dropout
                    .filter(|(p, _)| *p > 0.0)
                    .map(|(p, key)| simd::Mask::new(p, key)),
            )
        }

        fn args(&self) -> (u32, u32, u32, f32, i32) {
            match self.0 {
                Some(m) => (
                    m.key as u32,
                    (m.key >> 32) as u32,
                    m.threshold,
                    m.keep_scale,
                    1,
                ),
                None => (0, 0, 0, 1.0, 0),
            }
        }
    }

    fn check_u32(n: usize, what: &str) -> Result<()> {
        if n > u32::MAX as usize {
            candle_core::bail!("wick cuda kernel: {what} of {n} elements (over 2^32)")
        }
        Ok(())
    }

    /// `y = layer_norm(dropout(a) + x)` with weight and bias stacked as `wb` `(2, cols)`.
    struct LayerNorm {
        eps: f32,
        drop: DropMask,
    }

    impl LayerNorm {
        fn forward(
            &self,
            a: (&CudaStorage, &Layout),
            x: Option<(&CudaStorage, &Layout)>,
            wb: (&CudaStorage, &Layout),
        ) -> Result<(CudaStorage, Shape)> {
            let dev = a.0.device().clone();
            let ai = input(a.0, a.1, "layer norm input")?;
            let xi = match x {
                Some((s, l)) => Some(input(s, l, "residual")?),
                None => None,
            };
            let wbi = input(wb.0, wb.1, "weight and bias")?;
            let cols = wbi.len / 2;
            let rows = self.check(&ai, xi.as_ref(), &wbi)?;
            let y = alloc(&dev, ai.dtype, ai.len)?;
            let name = format!(
                "wick_ln_fwd_{}_k{}",
                suffix(ai.dtype)?,
                width(cols, "layer norm row")?
            );
            let (lo, hi, thr, scale, on) = self.drop.args();
            launch!(
                dev,
                name,
                rows_config(rows),
                ai.ptr,
                xi.as_ref().map_or(ai.ptr, |x| x.ptr),
                i32::from(xi.is_some()),
                wbi.ptr,
                wbi.ptr + (cols * 4) as u64,
                address(&y, 0)?,
                rows as i32,
                cols as i32,
                self.eps,
                lo,
                hi,
                thr,
                scale,
                on
            );
            Ok((y, a.1.shape().clone()))
        }

        fn check(&self, a: &Input, x: Option<&Input>, wb: &Input) -> Result<usize> {
            let cols = wb.len / 2;
            let bad = wb.dtype != DType::F32
                || !wb.len.is_multiple_of(2)
                || cols == 0
                || cols > MAX_ROW
                || !a.len.is_multiple_of(cols)
                || x.is_some_and(|x| x.len != a.len || x.dtype != a.dtype);
            if bad {
                candle_core::bail!(
                    "wick cuda layer norm: {} input values, residual {:?}, {} f32 weight and bias values",
                    a.len,
                    x.map(|x| x.len),
                    wb.len
                )
            }
            check_u32(a.len, "layer norm input")?;
            Ok(a.len / cols)
        }

        /// Gradients of the input `a`, the residual `x` (the same tensor when no dropout) and
        /// the stacked weight and bias.
        fn backward(
            &self,
            a: &Tensor,
            x: Option<&Tensor>,
            wb: &Tensor,
            grad: &Tensor,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            with_input(a, "layer norm input", |storage, ai| {
                let dev = storage.device().clone();
                let x = x.map(|x| x.detach().contiguous()).transpose()?;
                let x_guard = x.as_ref().map(|x| x.storage_and_layout());
                let xi = match &x_guard {
                    Some((s, l)) => match &**s {
                        Storage::Cuda(c) => Some(input(c, l, "residual")?),
                        _ => candle_core::bail!("wick cuda layer norm: residual not on CUDA"),
                    },
                    None => None,
                };
                with_input(wb, "weight and bias", |_, wbi| {
                    with_input(grad, "output gradient", |_, gi| {
                        let rows = self.check(&ai, xi.as_ref(), &wbi)?;
                        let cols = wbi.len / 2;
                        if gi.len != ai.len || gi.dtype != ai.dtype {
                            candle_core::bail!(
                                "wick cuda layer norm: gradient of {} values",
                                gi.len
                            )
                        }
                        let gx = alloc(&dev, ai.dtype, ai.len)?;
                        let ga = match self.drop.0 {
                            Some(_) => Some(alloc(&dev, ai.dtype, ai.len)?),
                            None => None,
                        };
                        let warps = rows.div_ceil(LN_BWD_ROWS);
                        let partials = alloc(&dev, DType::F32, warps * 2 * cols)?;
                        let gwb = alloc(&dev, DType::F32, 2 * cols)?;
                        let name = format!(
                            "wick_ln_bwd_{}_k{}",
                            suffix(ai.dtype)?,
                            width(cols, "layer norm row")?
                        );
                        let (lo, hi, thr, scale, on) = self.drop.args();
                        let gx_ptr = address(&gx, 0)?;
                        launch!(
                            dev,
                            name,
                            rows_config(warps),
                            ai.ptr,
                            xi.as_ref().map_or(ai.ptr, |x| x.ptr),
                            i32::from(xi.is_some()),
                            wbi.ptr,
                            gi.ptr,
                            gx_ptr,
                            ga.as_ref().map_or(Ok(gx_ptr), |g| address(g, 0))?,
                            address(&partials, 0)?,
                            rows as i32,
                            cols as i32,
                            LN_BWD_ROWS as i32,
                            self.eps,
                            lo,
                            hi,
                            thr,
                            scale,
                            on
                        );
                        sum_partials(&dev, &partials, warps, 2 * cols, &gwb)?;
                        let gx = tensor(gx, a.shape());
                        let ga = match ga {
                            Some(ga) => tensor(ga, a.shape()),
                            None => gx.clone(),
                        };
                        Ok((ga, gx, tensor(gwb, wb.shape())))
                    })
                })
            })
        }
    }

    /// `out[c] = sum over j < n of partials[j * width + c]`, in a fixed order.
    fn sum_partials(
        dev: &CudaDevice,
        partials: &CudaStorage,
        n: usize,
        width: usize,
        out: &CudaStorage,
    ) -> Result<()> {
        sum_partials_to(dev, address(partials, 0)?, n, width, address(out, 0)?)
    }

    /// [`sum_partials`] between device addresses.
    fn sum_partials_to(
        dev: &CudaDevice,
        partials: u64,
        n: usize,
        width: usize,
        out: u64,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: ((width as u32).div_ceil(32), 1, 1),
            block_dim: (32, 32, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            dev,
            "wick_sum_partials",
            cfg,
            partials,
            n as i32,
            width as i32,
            out
        );
        Ok(())
    }

    struct ResidualLayerNorm(LayerNorm);

    impl CustomOp3 for ResidualLayerNorm {
        fn name(&self) -> &'static str {
            "wick-cuda-residual-layer-norm"
        }

        cuda_only!("wick cuda layer norm called on CPU tensors", s1 l1, s2 l2, s3 l3);

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            self.0.forward((s1, l1), Some((s2, l2)), (s3, l3))
        }

        fn bwd(
            &self,
            a: &Tensor,
            x: &Tensor,
            wb: &Tensor,
            _y: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let (ga, gx, gwb) = self.0.backward(a, Some(x), wb, grad)?;
            Ok((Some(ga), Some(gx), Some(gwb)))
        }
    }

    struct PlainLayerNorm(LayerNorm);

    impl CustomOp2 for PlainLayerNorm {
        fn name(&self) -> &'static str {
            "wick-cuda-layer-norm"
        }

        cuda_only!("wick cuda layer norm called on CPU tensors", s1 l1, s2 l2);

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            self.0.forward((s1, l1), None, (s2, l2))
        }

        fn bwd(
            &self,
            a: &Tensor,
            wb: &Tensor,
            _y: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let (ga, _, gwb) = self.0.backward(a, None, wb, grad)?;
            Ok((Some(ga), Some(gwb)))
        }
    }

    /// `layer_norm(dropout(a) + x)` over the last dimension (`x` optional), `a` and `x` in the
    /// compute dtype, `weight` and `bias` f32; the dropout mask keyed as on the CPU.
    pub fn residual_layer_norm(
        a: &Tensor,
        x: Option<&Tensor>,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
        dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        let wb = Tensor::stack(&[weight, bias], 0)?.to_dtype(DType::F32)?;
        let op = LayerNorm {
            eps: eps as f32,
            drop: DropMask::new(dropout),
        };
        let a = a.contiguous()?;
        match x {
            Some(x) => a.apply_op3(&x.contiguous()?, &wb, ResidualLayerNorm(op)),
            None => a.apply_op2(&wb, PlainLayerNorm(op)),
        }
    }

    /// `dropout(softmax(scale * scores + bias))` over the last dimension of `(batch, heads, q, k)`
    /// scores, the f32 bias `(batch, 1, 1, k)` held by the op (it takes no gradient).
    struct AttentionProbs {
        bias: Tensor,
        scale: f32,
        drop: DropMask,
    }

    impl AttentionProbs {
        /// Rows, keys per row and rows per batch element of `scores`.
        fn dims(&self, scores: &Input, shape: &Shape) -> Result<(usize, usize, usize)> {
            let k = *shape.dims().last().unwrap_or(&0);
            let batch = self.bias.dim(0)?;
            if k == 0
                || k > MAX_ROW
                || self.bias.dtype() != DType::F32
                || self.bias.elem_count() != batch * k
                || !scores.len.is_multiple_of(batch * k)
            {
                candle_core::bail!(
                    "wick cuda attention: scores {shape:?} with mask bias {:?}",
                    self.bias.shape()
                )
            }
            check_u32(scores.len, "attention scores")?;
            Ok((scores.len / k, k, scores.len / (batch * k)))
        }
    }

    impl CustomOp1 for AttentionProbs {
        fn name(&self) -> &'static str {
            "wick-cuda-attention-probs"
        }

        cuda_only!("wick cuda attention called on CPU tensors", s1 l1);

        fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = storage.device().clone();
            let si = input(storage, layout, "attention scores")?;
            let (rows, k, per_batch) = self.dims(&si, layout.shape())?;
            let out = alloc(&dev, si.dtype, si.len)?;
            with_input(&self.bias, "attention mask bias", |_, bias| {
                let name = format!(
                    "wick_softmax_fwd_{}_k{}",
                    suffix(si.dtype)?,
                    width(k, "attention row")?
                );
                let (lo, hi, thr, scale, on) = self.drop.args();
                launch!(
                    dev,
                    name,
                    rows_config(rows),
                    si.ptr,
                    bias.ptr,
                    address(&out, 0)?,
                    rows as i32,
                    k as i32,
                    per_batch as i32,
                    self.scale,
                    lo,
                    hi,
                    thr,
                    scale,
                    on
                );
                Ok(())
            })?;
            Ok((out, layout.shape().clone()))
        }

        fn bwd(&self, scores: &Tensor, _probs: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            self.backward(scores, grad).map(Some)
        }
    }

    impl AttentionProbs {
        /// The gradient of the scores (probabilities recomputed from them).
        fn backward(&self, scores: &Tensor, grad: &Tensor) -> Result<Tensor> {
            with_input(scores, "attention scores", |storage, si| {
                let dev = storage.device().clone();
                let (rows, k, per_batch) = self.dims(&si, scores.shape())?;
                with_input(grad, "attention gradient", |_, gi| {
                    with_input(&self.bias, "attention mask bias", |_, bias| {
                        let out = alloc(&dev, si.dtype, si.len)?;
                        let name = format!(
                            "wick_softmax_bwd_{}_k{}",
                            suffix(si.dtype)?,
                            width(k, "attention row")?
                        );
                        let (lo, hi, thr, scale, on) = self.drop.args();
                        launch!(
                            dev,
                            name,
                            rows_config(rows),
                            si.ptr,
                            bias.ptr,
                            gi.ptr,
                            address(&out, 0)?,
                            rows as i32,
                            k as i32,
                            per_batch as i32,
                            self.scale,
                            lo,
                            hi,
                            thr,
                            scale,
                            on
                        );
                        Ok(tensor(out, scores.shape()))
                    })
                })
            })
        }
    }

    /// The attention probabilities `dropout(softmax(scale * scores + bias))` in the scores'
    /// dtype, for `(batch, heads, q, k)` scores and the f32 bias of
    /// [`crate::ops::attention_bias`]; statistics in f32.
    pub fn attention_probs(
        scores: &Tensor,
        bias: &Tensor,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        scores.contiguous()?.apply_op1(AttentionProbs {
            bias: bias.detach().contiguous()?,
            scale: scale as f32,
            drop: DropMask::new(dropout),
        })
    }

    /// One pointwise kernel over a contiguous input: `wick_<kind>_<dtype>(x, y, n, extra...)`.
    fn pointwise(
        storage: &CudaStorage,
        layout: &Layout,
        kind: &str,
        drop: Option<DropMask>,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = storage.device().clone();
        let xi = input(storage, layout, kind)?;
        let out = alloc(&dev, xi.dtype, xi.len)?;
        let name = format!("wick_{kind}_{}", suffix(xi.dtype)?);
        let cfg = elementwise_config(xi.len);
        match drop {
            Some(drop) => {
                check_u32(xi.len, "dropout input")?;
                let (lo, hi, thr, scale, on) = drop.args();
                launch!(
                    dev,
                    name,
                    cfg,
                    xi.ptr,
                    address(&out, 0)?,
                    xi.len,
                    lo,
                    hi,
                    thr,
                    scale,
                    on
                );
            }
            None => launch!(dev, name, cfg, xi.ptr, address(&out, 0)?, xi.len),
        }
        Ok((out, layout.shape().clone()))
    }

    struct Gelu;

    impl CustomOp1 for Gelu {
        fn name(&self) -> &'static str {
            "wick-cuda-gelu"
        }

        cuda_only!("wick cuda gelu called on CPU tensors", s1 l1);

        fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
            pointwise(storage, layout, "gelu_fwd", None)
        }

        fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let g = grad.detach().contiguous()?;
            Ok(Some(
                x.detach()
                    .contiguous()?
                    .apply_op2_no_bwd(&g, &GeluBackward)?,
            ))
        }
    }

    /// The exact (erf) GELU.
    pub fn gelu(xs: &Tensor) -> Result<Tensor> {
        xs.contiguous()?.apply_op1(Gelu)
    }

    struct Dropout(DropMask);

    impl CustomOp1 for Dropout {
        fn name(&self) -> &'static str {
            "wick-cuda-dropout"
        }

        cuda_only!("wick cuda dropout called on CPU tensors", s1 l1);

        fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
            pointwise(storage, layout, "dropout", Some(self.0))
        }

        /// The same mask multiplies the gradient.
        fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some(
                grad.detach()
                    .contiguous()?
                    .apply_op1_no_bwd(&Dropout(self.0))?,
            ))
        }
    }

    /// Inverted dropout with drop probability `p`, the mask keyed by `key` (the CPU's mask).
    pub fn dropout(xs: &Tensor, p: f64, key: u64) -> Result<Tensor> {
        xs.contiguous()?
            .apply_op1(Dropout(DropMask::new(Some((p, key)))))
    }

    /// `word[ids] + type[type_ids] + position[position_ids]`, f32 tables `(rows, hidden)`, the
    /// u32 id tensors of `n` ids held by the op.
    struct Embeddings {
        ids: [Tensor; 3],
    }

    impl Embeddings {
        fn table_grad(&self, which: usize, table: &Tensor, grad: &Tensor) -> Result<Tensor> {
            let (vocab, hidden) = table.dims2()?;
            with_input(grad, "embedding gradient", |storage, gi| {
                with_input(&self.ids[which], "ids", |_, ids| {
                    let dev = storage.device().clone();
                    if gi.len != ids.len * hidden || gi.dtype != DType::F32 {
                        candle_core::bail!(
                            "wick cuda embeddings: gradient of {} values for {} ids",
                            gi.len,
                            ids.len
                        )
                    }
                    let out = alloc(&dev, DType::F32, vocab * hidden)?;
                    if vocab < 64 {
                        let cfg = LaunchConfig {
                            grid_dim: ((hidden as u32).div_ceil(32), vocab as u32, 1),
                            block_dim: (32, 8, 1),
                            shared_mem_bytes: 0,
                        };
                        launch!(
                            dev,
                            "wick_embed_bwd_cols",
                            cfg,
                            gi.ptr,
                            ids.ptr,
                            ids.len as i32,
                            hidden as i32,
                            address(&out, 0)?
                        );
                    } else {
                        let name =
                            format!("wick_embed_bwd_rows_k{}", width(hidden, "embedding row")?);
                        launch!(
                            dev,
                            name,
                            rows_config(vocab),
                            gi.ptr,
                            ids.ptr,
                            ids.len as i32,
                            hidden as i32,
                            vocab as i32,
                            address(&out, 0)?
                        );
                    }
                    Ok(tensor(out, table.shape()))
                })
            })
        }
    }

    impl CustomOp3 for Embeddings {
        fn name(&self) -> &'static str {
            "wick-cuda-embeddings"
        }

        cuda_only!("wick cuda embeddings called on CPU tensors", s1 l1, s2 l2, s3 l3);

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = s1.device().clone();
            let word = input(s1, l1, "word embeddings")?;
            let pos = input(s2, l2, "position embeddings")?;
            let typ = input(s3, l3, "token type embeddings")?;
            let hidden = *l1.dims().last().unwrap_or(&0);
            let n = self.ids[0].elem_count();
            let same = [&word, &pos, &typ].iter().all(|t| t.dtype == DType::F32)
                && [l2, l3].iter().all(|l| l.dims().last() == Some(&hidden))
                && self
                    .ids
                    .iter()
                    .all(|i| i.elem_count() == n && i.dtype() == DType::U32);
            if !same || hidden == 0 {
                candle_core::bail!(
                    "wick cuda embeddings: f32 tables of one width and n u32 ids each"
                )
            }
            check_u32(n * hidden, "embeddings")?;
            let out = alloc(&dev, DType::F32, n * hidden)?;
            with_input(&self.ids[0], "word ids", |_, wid| {
                with_input(&self.ids[1], "position ids", |_, pid| {
                    with_input(&self.ids[2], "token type ids", |_, tid| {
                        launch!(
                            dev,
                            "wick_embed_fwd",
                            elementwise_config(n * hidden),
                            word.ptr,
                            pos.ptr,
                            typ.ptr,
                            wid.ptr,
                            pid.ptr,
                            tid.ptr,
                            address(&out, 0)?,
                            n as i32,
                            hidden as i32
                        );
                        Ok(())
                    })
                })
            })?;
            Ok((out, Shape::from((n, hidden))))
        }

        fn bwd(
            &self,
            word: &Tensor,
            pos: &Tensor,
            typ: &Tensor,
            _out: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            Ok((
                Some(self.table_grad(0, word, grad)?),
                Some(self.table_grad(1, pos, grad)?),
                Some(self.table_grad(2, typ, grad)?),
            ))
        }
    }

    /// `word[word_ids] + token_type[type_ids] + position[position_ids]` as `(n, hidden)` f32, for
    /// f32 tables `[word, position, token_type]` and u32 ids `[word, position, token_type]` of
    /// `n` elements each. Backward gives each table its gradient directly (Candle's gather
    /// backward adds into a zeroed table one id at a time).
    pub fn embeddings(tables: [&Tensor; 3], ids: [&Tensor; 3]) -> Result<Tensor> {
        let ids = ids.map(|t| t.detach().flatten_all().and_then(|t| t.contiguous()));
        let [wid, pid, tid] = ids;
        let op = Embeddings {
            ids: [wid?, pid?, tid?],
        };
        tables[0]
            .contiguous()?
            .apply_op3(&tables[1].contiguous()?, &tables[2].contiguous()?, op)
    }

    /// Column sums of a `(rows, cols)` tensor in f32: `(cols,)`, in a fixed order.
    fn col_sum(t: &Tensor) -> Result<Tensor> {
        let (rows, cols) = t.dims2()?;
        with_input(t, "column sum input", |storage, ti| {
            let dev = storage.device().clone();
            let chunks = rows.div_ceil(64).max(1);
            let partials = alloc(&dev, DType::F32, chunks * cols)?;
            let out = alloc(&dev, DType::F32, cols)?;
            let cfg = LaunchConfig {
                grid_dim: ((cols as u32).div_ceil(32), chunks as u32, 1),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            };
            let name = format!("wick_col_sum_partial_{}", suffix(ti.dtype)?);
            launch!(
                dev,
                name,
                cfg,
                ti.ptr,
                rows as i32,
                cols as i32,
                address(&partials, 0)?
            );
            sum_partials(&dev, &partials, chunks, cols, &out)?;
            Ok(tensor(out, &Shape::from(cols)))
        })
    }

    /// A linear layer `act(x w^T + b)` as one graph node (Candle's would be four: the weight's
    /// cast and transpose, the product, the bias): the product runs on detached tensors before
    /// the node, whose own forward adds the bias (and applies GELU, keeping its input).
    struct Linear {
        product: std::sync::Mutex<Option<Tensor>>,
        gelu: bool,
        pre: crate::fused::Saved<Tensor>,
    }

    impl CustomOp3 for Linear {
        fn name(&self) -> &'static str {
            "wick-cuda-linear"
        }

        cuda_only!("wick cuda linear called on CPU tensors", s1 l1, s2 l2, s3 l3);

        fn cuda_fwd(
            &self,
            _x: &CudaStorage,
            _xl: &Layout,
            _w: &CudaStorage,
            _wl: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let product = take_stashed(&self.product, "wick cuda linear")?;
            let bi = input(b, bl, "bias")?;
            let shape = product.shape().clone();
            let cols = bi.len;
            with_input(&product, "product", |storage, yi| {
                let dev = storage.device().clone();
                if bi.dtype != DType::F32
                    || cols == 0
                    || yi.len % cols != 0
                    || shape.dims().last() != Some(&cols)
                {
                    candle_core::bail!(
                        "wick cuda linear: product {shape:?} with {cols} {} bias values",
                        bi.dtype.as_str()
                    )
                }
                let out = alloc(&dev, yi.dtype, yi.len)?;
                let pre = if self.gelu {
                    Some(alloc(&dev, yi.dtype, yi.len)?)
                } else {
                    None
                };
                let out_ptr = address(&out, 0)?;
                let name = format!("wick_bias_act_{}", suffix(yi.dtype)?);
                launch!(
                    dev,
                    name,
                    elementwise_config(yi.len),
                    yi.ptr,
                    bi.ptr,
                    pre.as_ref().map_or(Ok(out_ptr), |p| address(p, 0))?,
                    out_ptr,
                    yi.len,
                    cols as i32,
                    i32::from(self.gelu)
                );
                if let Some(pre) = pre {
                    self.pre.put(tensor(pre, &shape));
                }
                Ok((out, shape.clone()))
            })
        }

        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
            _out: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dtype = x.dtype();
            let mut g = grad.detach().contiguous()?;
            if self.gelu {
                let pre = self.pre.take("wick cuda linear")?;
                g = pre.apply_op2_no_bwd(&g, &GeluBackward)?;
            }
            let gx = g.matmul(&w.detach().to_dtype(dtype)?)?;
            // Frozen parameters (LoRA's base, not adapted here) get no gradient, and their
            // product is skipped.
            let gw = w
                .track_op()
                .then(|| g.t()?.matmul(&x.detach())?.to_dtype(w.dtype()))
                .transpose()?;
            let gb = b
                .track_op()
                .then(|| col_sum(&g)?.to_dtype(b.dtype()))
                .transpose()?;
            Ok((Some(gx), gw, gb))
        }
    }

    /// `gelu'(x) * grad` as a graph-free op (the backward of [`Linear`] with GELU).
    struct GeluBackward;

    impl CustomOp2 for GeluBackward {
        fn name(&self) -> &'static str {
            "wick-cuda-gelu-backward"
        }

        cuda_only!("wick cuda gelu called on CPU tensors", s1 l1, s2 l2);

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let xi = input(s1, l1, "gelu input")?;
            let gi = input(s2, l2, "gelu gradient")?;
            if gi.len != xi.len || gi.dtype != xi.dtype {
                candle_core::bail!(
                    "wick cuda gelu: gradient of {} values for {}",
                    gi.len,
                    xi.len
                )
            }
            let dev = s1.device().clone();
            let out = alloc(&dev, xi.dtype, xi.len)?;
            let name = format!("wick_gelu_bwd_{}", suffix(xi.dtype)?);
            launch!(
                dev,
                name,
                elementwise_config(xi.len),
                xi.ptr,
                gi.ptr,
                address(&out, 0)?,
                xi.len
            );
            Ok((out, l1.shape().clone()))
        }
    }

    /// `act(x w^T + b)` for `x` `(rows, in)` in the compute dtype, f32 `w` `(out, in)` and `b`:
    /// one graph node. `gelu`: the exact GELU.
    pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        let product = x.detach().matmul(&w.detach().to_dtype(x.dtype())?.t()?)?;
        let tracked = x.track_op() || w.track_op() || b.track_op();
        x.apply_op3(
            w,
            b,
            Linear {
                product: std::sync::Mutex::new(Some(product)),
                gelu,
                pre: crate::fused::Saved::new(tracked && gelu),
            },
        )
    }

    /// Launches the heads kernel: `to_heads` reads columns `[offset, offset + hidden)` of
    /// `(batch * seq, stride)` rows at `rows` into `(batch, heads, seq, head)` at `split`,
    /// otherwise writes them back from there.
    #[allow(clippy::too_many_arguments)]
    fn launch_heads(
        dev: &CudaDevice,
        dtype: DType,
        (rows, split): (u64, u64),
        (batch, seq, heads, head): (usize, usize, usize, usize),
        stride: usize,
        offset: usize,
        to_heads: bool,
    ) -> Result<()> {
        let n = batch * seq * heads * head;
        check_u32(n, "attention heads")?;
        let (input, output) = if to_heads {
            (rows, split)
        } else {
            (split, rows)
        };
        let name = format!("wick_heads_{}", suffix(dtype)?);
        launch!(
            dev,
            name,
            elementwise_config(n),
            input,
            output,
            batch as i32,
            seq as i32,
            heads as i32,
            head as i32,
            stride as i32,
            offset as i32,
            i32::from(to_heads)
        );
        Ok(())
    }

    /// `y + b` for a `(rows, cols)` product `y` and an f32 bias, outside the graph.
    fn bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
        with_input(y, "product", |storage, yi| {
            with_input(b, "bias", |_, bi| {
                let cols = bi.len;
                if bi.dtype != DType::F32 || cols == 0 || y.dims().last() != Some(&cols) {
                    candle_core::bail!(
                        "wick cuda bias: product {:?} with {cols} bias values",
                        y.shape()
                    )
                }
                let dev = storage.device().clone();
                let out = alloc(&dev, yi.dtype, yi.len)?;
                let out_ptr = address(&out, 0)?;
                let name = format!("wick_bias_act_{}", suffix(yi.dtype)?);
                launch!(
                    dev,
                    name,
                    elementwise_config(yi.len),
                    yi.ptr,
                    bi.ptr,
                    out_ptr,
                    out_ptr,
                    yi.len,
                    cols as i32,
                    0i32
                );
                Ok(tensor(out, y.shape()))
            })
        })
    }

    /// A transformer layer's self-attention up to its context, `(rows, hidden)` hidden states to
    /// the `(rows, hidden)` context, as one graph node over `x` and the stacked query, key and
    /// value weights `(3 hidden, hidden)` and biases: the projection, head split, both batched
    /// products and the softmax run on detached tensors before the node, whose own forward
    /// merges the heads. Backward recomputes the probabilities from the saved scores and gives
    /// `x` one gradient (Candle would add three projections' and zero a buffer for each).
    struct SelfAttention {
        probs: AttentionProbs,
        /// The scores' scale: applied by `probs`, or (with a position bias, which is added to
        /// the scaled scores) before it, `probs` then scaling by 1.
        scale: f32,
        dims: (usize, usize, usize, usize),
        context: std::sync::Mutex<Option<Tensor>>,
        saved: crate::fused::Saved<[Tensor; 4]>,
    }

    impl SelfAttention {
        fn hidden(&self) -> usize {
            self.dims.2 * self.dims.3
        }

        /// Columns `[part * hidden, (part + 1) * hidden)` of `(rows, stride)` rows as
        /// `(batch, heads, seq, head)`.
        fn split(&self, t: &Tensor, part: usize) -> Result<Tensor> {
            let (batch, seq, heads, head) = self.dims;
            with_input(t, "attention input", |storage, si| {
                let stride = t.dim(1)?;
                if si.len != batch * seq * stride || (part + 1) * self.hidden() > stride {
                    candle_core::bail!(
                        "wick cuda attention: input {:?} for {:?}",
                        t.shape(),
                        self.dims
                    )
                }
                let dev = storage.device().clone();
                let out = alloc(&dev, si.dtype, batch * seq * self.hidden())?;
                launch_heads(
                    &dev,
                    si.dtype,
                    (si.ptr, address(&out, 0)?),
                    self.dims,
                    stride,
                    part * self.hidden(),
                    true,
                )?;
                Ok(tensor(out, &Shape::from((batch, heads, seq, head))))
            })
        }

        /// `(batch, heads, seq, head)` tensors into consecutive column blocks of one
        /// `(rows, parts.len() * hidden)` storage.
        fn merge(&self, parts: &[&Tensor]) -> Result<CudaStorage> {
            let (batch, seq, _, _) = self.dims;
            let stride = parts.len() * self.hidden();
            let first = parts
                .first()
                .ok_or_else(|| candle_core::Error::Msg("nothing to merge".into()))?;
            let candle_core::Device::Cuda(dev) = first.device() else {
                candle_core::bail!("wick cuda attention: not on a CUDA device")
            };
            let out = alloc(dev, first.dtype(), batch * seq * stride)?;
            let out_ptr = address(&out, 0)?;
            for (i, part) in parts.iter().enumerate() {
                with_input(part, "attention heads", |_, pi| {
                    if pi.len != batch * seq * self.hidden() || pi.dtype != first.dtype() {
                        candle_core::bail!(
                            "wick cuda attention: heads {:?} for {:?}",
                            part.shape(),
                            self.dims
                        )
                    }
                    launch_heads(
                        dev,
                        pi.dtype,
                        (out_ptr, pi.ptr),
                        self.dims,
                        stride,
                        i * self.hidden(),
                        false,
                    )
                })?;
            }
            Ok(out)
        }
    }

    impl CustomOp3 for SelfAttention {
        fn name(&self) -> &'static str {
            "wick-cuda-self-attention"
        }

        cuda_only!("wick cuda attention called on CPU tensors", s1 l1, s2 l2, s3 l3);

        fn cuda_fwd(
            &self,
            _x: &CudaStorage,
            xl: &Layout,
            _w: &CudaStorage,
            _wl: &Layout,
            _b: &CudaStorage,
            _bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            self.output(xl)
        }

        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
            _out: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let (gx, gw, gb, _) = self.backward(x, w, b.dtype(), grad, None)?;
            Ok((Some(gx), Some(gw), Some(gb)))
        }
    }

    impl SelfAttention {
        /// The context as the op's output (computed before the op ran).
        fn output(&self, xl: &Layout) -> Result<(CudaStorage, Shape)> {
            let context = take_stashed(&self.context, "wick cuda attention")?;
            let out = self.merge(&[&context])?;
            Ok((out, xl.shape().clone()))
        }

        /// Gradients of the input, the stacked weight `w` `(3 hidden, hidden)`, the stacked bias
        /// (in `b_dtype`) and, with `position` `Some(true)`, of the position bias `(1, heads,
        /// seq, seq)`. `position`: `None` without a position bias, `Some(wanted)` with one.
        fn backward(
            &self,
            x: &Tensor,
            w: &Tensor,
            b_dtype: DType,
            grad: &Tensor,
            position: Option<bool>,
        ) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
            let [q, k, v, scores] = self.saved.take("wick cuda attention")?;
            let g_context = self.split(&grad.detach().contiguous()?, 0)?;
            let probs = scores.apply_op1_no_bwd(&self.probs)?;
            let g_probs = g_context.matmul(&v.t()?)?;
            let g_v = probs.t()?.matmul(&g_context)?;
            drop((probs, g_context));
            let mut g_scores = self.probs.backward(&scores, &g_probs)?;
            drop(g_probs);
            // With a position bias, `probs` saw the scaled, biased scores: their gradient is the
            // bias's (summed over the batch, where the bias wants one: not when it is frozen),
            // and times the scale the raw scores', whether or not the bias wants its own.
            let g_position = match position {
                Some(wanted) => {
                    let g = wanted.then(|| g_scores.sum_keepdim(0)).transpose()?;
                    g_scores = (g_scores * self.scale as f64)?;
                    g
                }
                None => None,
            };
            let g_q = g_scores.matmul(&k)?;
            let g_k = g_scores.t()?.matmul(&q)?;
            drop(g_scores);
            let rows = x.dim(0)?;
            let g_qkv = tensor(
                self.merge(&[&g_q, &g_k, &g_v])?,
                &Shape::from((rows, 3 * self.hidden())),
            );
            drop((g_q, g_k, g_v));
            let gx = g_qkv.matmul(&w.detach().to_dtype(x.dtype())?)?;
            // All three blocks, also under LoRA on some of them (unlike the CPU path): computing
            // only the wanted ones (narrowed copies, a product each, zeros for the rest, one
            // cat) made MPNet's bf16 16 x 512 step with adapters on query and value 3% slower on
            // an H100, and bert-base's f32 64 x 512 one 0.9% faster (`bench/h100/session59.sh`):
            // the launches cost more than the skipped third of one product saves.
            let gw = g_qkv.t()?.matmul(&x.detach())?.to_dtype(w.dtype())?;
            let gb = col_sum(&g_qkv)?.to_dtype(b_dtype)?;
            Ok((gx, gw, gb, g_position))
        }
    }

    /// [`SelfAttention`] with a position bias that takes its gradient (MPNet's relative position
    /// bias): the op's inputs are the input, the stacked f32 weight and bias packed into one
    /// flat tensor (`3 hidden * hidden`, then `3 hidden` values), and the bias `(1, heads, seq,
    /// seq)` in the compute dtype.
    struct WithPosition(SelfAttention);

    impl CustomOp3 for WithPosition {
        fn name(&self) -> &'static str {
            "wick-cuda-self-attention-position-bias"
        }

        cuda_only!("wick cuda attention called on CPU tensors", s1 l1, s2 l2, s3 l3);

        fn cuda_fwd(
            &self,
            _x: &CudaStorage,
            xl: &Layout,
            _wb: &CudaStorage,
            _wbl: &Layout,
            _p: &CudaStorage,
            _pl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            self.0.output(xl)
        }

        fn bwd(
            &self,
            x: &Tensor,
            packed: &Tensor,
            position: &Tensor,
            _out: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let hidden = self.0.hidden();
            let w = packed
                .narrow(0, 0, 3 * hidden * hidden)?
                .reshape((3 * hidden, hidden))?;
            let (gx, gw, gb, gp) =
                self.0
                    .backward(x, &w, packed.dtype(), grad, Some(position.track_op()))?;
            let g_packed = Tensor::cat(&[&gw.flatten_all()?, &gb], 0)?;
            let gp = gp.map(|g| g.to_dtype(position.dtype())).transpose()?;
            Ok((Some(gx), Some(g_packed), gp))
        }
    }

    /// A layer's self-attention from its `(rows, hidden)` input `x` in the compute dtype to the
    /// `(rows, hidden)` context: the query, key and value projections (f32 weights `(hidden,
    /// hidden)` and biases, stacked in the graph), `softmax(scale q k^T + bias)` with dropout,
    /// times `v`, per head; the f32 `bias` `(batch, 1, 1, seq)` from
    /// [`crate::ops::attention_bias`], and `position`, if any, a bias `(1, heads, seq, seq)` in
    /// the compute dtype added to the scaled scores (MPNet's), which takes its gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn self_attention(
        x: &Tensor,
        weights: [&Tensor; 3],
        biases: [&Tensor; 3],
        bias: &Tensor,
        position: Option<&Tensor>,
        heads: usize,
        scale: f64,
        dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        let (rows, hidden) = x.dims2()?;
        let batch = bias.dim(0)?;
        if heads == 0 || hidden % heads != 0 || batch == 0 || rows % batch != 0 {
            candle_core::bail!(
                "wick cuda attention: {rows} x {hidden} with {heads} heads, batch {batch}"
            )
        }
        let (w, b, packed) = crate::fused::stacked_projection(weights, biases, position.is_some())?;
        let tracked =
            x.track_op() || w.track_op() || b.track_op() || position.is_some_and(|p| p.track_op());
        let mut op = SelfAttention {
            probs: AttentionProbs {
                bias: bias.detach().contiguous()?,
                scale: if position.is_some() {
                    1.0
                } else {
                    scale as f32
                },
                drop: DropMask::new(dropout),
            },
            scale: scale as f32,
            dims: (batch, rows / batch, heads, hidden / heads),
            context: std::sync::Mutex::new(None),
            saved: crate::fused::Saved::new(tracked),
        };
        let x = x.contiguous()?;
        let product = x.detach().matmul(&w.detach().to_dtype(x.dtype())?.t()?)?;
        let qkv = bias_add(&product, &b.detach())?;
        drop(product);
        let (qs, ks, vs) = (op.split(&qkv, 0)?, op.split(&qkv, 1)?, op.split(&qkv, 2)?);
        drop(qkv);
        let mut scores = qs.matmul(&ks.t()?)?;
        if let Some(position) = position {
            scores = (scores * scale)?.broadcast_add(&position.detach())?;
        }
        let probs = scores.apply_op1_no_bwd(&op.probs)?;
        let context = probs.matmul(&vs)?;
        drop(probs);
        op.context = std::sync::Mutex::new(Some(context));
        op.saved.put([qs, ks, vs, scores]);
        match (position, packed) {
            (Some(position), Some(packed)) => x.apply_op3(&packed, position, WithPosition(op)),
            _ => x.apply_op3(&w, &b, op),
        }
    }

    /// The trainer's AdamW and gradient norm (`crates/trainer`) over contiguous f32 tensors.
    pub mod optim {
        use super::*;

        fn f32_input(storage: &CudaStorage, layout: &Layout, what: &str) -> Result<Input> {
            let i = input(storage, layout, what)?;
            if i.dtype != DType::F32 {
                candle_core::bail!("wick cuda AdamW: {what} is {}, not f32", i.dtype.as_str())
            }
            check_u32(i.len, what)?;
            Ok(i)
        }

        /// Runs `f` on the f32 device input of `t`, which must already be contiguous (the
        /// address is then that of `t`'s own storage).
        fn with_f32<R>(
            t: &Tensor,
            what: &str,
            f: impl FnOnce(&CudaStorage, Input) -> Result<R>,
        ) -> Result<R> {
            if !t.is_contiguous() {
                candle_core::bail!("wick cuda AdamW: {what} is not contiguous")
            }
            let (storage, layout) = t.storage_and_layout();
            match &*storage {
                Storage::Cuda(cuda) => {
                    let i = f32_input(cuda, layout, what)?;
                    f(cuda, i)
                }
                _ => candle_core::bail!("wick cuda AdamW: {what} is not on a CUDA device"),
            }
        }

        /// One AdamW update of `param` with `grad` times the one-value `scale`, in one kernel
        /// (none at all where the one-value f32 `apply` is 0: a step skipped by loss scaling):
        /// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
        /// `p = p decay - step m / (sqrt(v) inv_bias2_sqrt + eps)`. The parameter and both
        /// moments are written in place: the kernel is queued on the device's one stream, after
        /// every op that reads them and before any that reads them next.
        #[allow(clippy::too_many_arguments)]
        pub fn adamw(
            param: &Tensor,
            grad: &Tensor,
            (m, v): (&Tensor, &Tensor),
            (scale, apply): (&Tensor, Option<&Tensor>),
            (beta1, beta2): (f32, f32),
            decay: f32,
            step: f32,
            inv_bias2_sqrt: f32,
            eps: f32,
        ) -> Result<()> {
            let flag = apply.unwrap_or(scale);
            let tensors = [param, grad, m, v, scale, flag];
            let names = [
                "parameter",
                "gradient",
                "first moment",
                "second moment",
                "gradient scale",
                "apply flag",
            ];
            let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
            let mut inputs = Vec::with_capacity(guards.len());
            for ((storage, layout), what) in guards.iter().zip(names) {
                if !layout.is_contiguous() {
                    candle_core::bail!("wick cuda AdamW: {what} is not contiguous")
                }
                let Storage::Cuda(cuda) = &**storage else {
                    candle_core::bail!("wick cuda AdamW: {what} is not on a CUDA device")
                };
                inputs.push((cuda, f32_input(cuda, layout, what)?));
            }
            let [(storage, pi), (_, gi), (_, mi), (_, vi), (_, si), (_, fi)] = &inputs[..] else {
                unreachable!("six tensors give six inputs")
            };
            if gi.len != pi.len
                || mi.len != pi.len
                || vi.len != pi.len
                || si.len != 1
                || fi.len != 1
            {
                candle_core::bail!(
                    "wick cuda AdamW: {} parameters, {} gradient, {} and {} moment, {} scale, {} flag values",
                    pi.len, gi.len, mi.len, vi.len, si.len, fi.len
                )
            }
            let dev = storage.device().clone();
            launch!(
                dev,
                "wick_adamw",
                elementwise_config(pi.len),
                pi.ptr,
                mi.ptr,
                vi.ptr,
                gi.ptr,
                si.ptr,
                fi.ptr,
                i32::from(apply.is_some()),
                pi.len as i32,
                beta1,
                beta2,
                decay,
                step,
                inv_bias2_sqrt,
                eps
            );
            Ok(())
        }

        /// `sum(g^2)` over every element of every tensor, as a one-value f32 tensor: one kernel
        /// per tensor (two for large ones) into one slot each, then one sum, in a fixed order.
        pub fn sum_of_squares(tensors: &[&Tensor]) -> Result<Tensor> {
            let Some(first) = tensors.first() else {
                candle_core::bail!("wick cuda sum of squares: no tensors")
            };
            let candle_core::Device::Cuda(dev) = first.device() else {
                candle_core::bail!("wick cuda sum of squares: not on a CUDA device")
            };
            let slots = alloc(dev, DType::F32, tensors.len())?;
            let slots_ptr = address(&slots, 0)?;
            for (i, t) in tensors.iter().enumerate() {
                with_f32(t, "gradient", |_, xi| {
                    let cfg = elementwise_config(xi.len);
                    let blocks = cfg.grid_dim.0 as usize;
                    let slot = slots_ptr + (i * 4) as u64;
                    if blocks == 1 {
                        launch!(dev, "wick_sum_squares_partial", cfg, xi.ptr, xi.len, slot);
                    } else {
                        let partials = alloc(dev, DType::F32, blocks)?;
                        let at = address(&partials, 0)?;
                        launch!(dev, "wick_sum_squares_partial", cfg, xi.ptr, xi.len, at);
                        sum_partials_to(dev, at, blocks, 1, slot)?;
                    }
                    Ok(())
                })?;
            }
            let out = alloc(dev, DType::F32, 1)?;
            sum_partials_to(dev, slots_ptr, tensors.len(), 1, address(&out, 0)?)?;
            Ok(tensor(out, &Shape::from(())))
        }
    }
}
