//! The pieces fitbench's own CPU models share: linear layers that use fitbench's kernels
//! where candle's are scalar, an embedding that stays quantized, and RoPE tables sized to
//! the run instead of the model's maximum context.

use super::kernels::{
    dot_half_rows, run_products, weighted_sum_rows, widen_half, Format, HalfRows, InPlace, Kernel,
    Panel, Repacked, RowProduct, SharedBytes, Tiles, PANEL_ROWS,
};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::{
    gguf_file, GgmlDType, GgmlType, QMatMul, QStorage, QTensor, QuantizedType,
};
use candle_core::{CpuStorage, Device, Layout, Module, Result, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::borrow::Cow;
use std::sync::Arc;

/// What [`Tensors::copied`] copies at a time.
const COPIED_BYTES: usize = 4 << 20;

/// A GGUF's tensors, read from the file memory-mapped: weights fitbench repacks are read
/// straight from the page cache (no copy of each tensor first), and each tensor's pages
/// leave this process once it is loaded, so the mapping never adds to the peak. Weights of
/// the types llama.cpp does not repack either (f16, Q4_1, Q5_0, Q5_1, Q8_0) are used in the
/// mapping itself.
pub struct Tensors {
    pub content: gguf_file::Content,
    map: Arc<memmap2::Mmap>,
    /// Whether the whole file was mapped in at once.
    populated: bool,
}

impl Tensors {
    pub fn map(file: &std::fs::File, content: gguf_file::Content) -> Result<Tensors> {
        let total: u64 = file.metadata()?.len();
        let in_place: u64 = content
            .tensor_infos
            .values()
            .filter(|info| used_in_place(info.ggml_dtype))
            .map(|info| {
                (info.shape.elem_count() / info.ggml_dtype.block_size()
                    * info.ggml_dtype.type_size()) as u64
            })
            .sum();
        let mut options = memmap2::MmapOptions::new();
        // A file mostly used where it lies is mapped in whole now, as llama.cpp maps every
        // file (sequential readahead, MAP_POPULATE): one pass over the disk, and no fault at
        // a time in the first run.
        let populated = in_place > total / 2;
        if populated {
            #[cfg(target_os = "linux")]
            // SAFETY: a plain system call on a descriptor the caller keeps open. Advice only.
            unsafe {
                use std::os::fd::AsRawFd;
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            }
            options.populate();
        }
        // SAFETY: the mapping is read-only; like llama.cpp's, it assumes nobody truncates the
        // file while the model loads.
        let map = unsafe { options.map(file)? };
        // Any other cold file is read ahead, whole, while the first tensors repack: a third
        // faster than sequential readahead here (benches/load.rs). Only files that fit in
        // memory get this far (the bench checks first). Advice only: a refusal changes nothing.
        if !populated {
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        Ok(Tensors {
            content,
            map: Arc::new(map),
            populated,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// A tensor's type, shape and bytes, its extent checked against the file.
    fn bytes(&self, name: &str) -> Result<(&gguf_file::TensorInfo, &[u8])> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor {name}")))?;
        let dtype = info.ggml_dtype;
        // Checked: the dimensions come from the file.
        let Some(elements) = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
        else {
            candle_core::bail!("{name}: dimensions {:?} overflow", info.shape.dims());
        };
        if elements % dtype.block_size() != 0 {
            candle_core::bail!("{name}: {elements} values are not whole {dtype:?} blocks");
        }
        let size = elements / dtype.block_size() * dtype.type_size();
        let start = self.content.tensor_data_offset.checked_add(info.offset);
        match start.and_then(|s| usize::try_from(s).ok()) {
            Some(start) if start <= self.map.len() && size <= self.map.len() - start => {
                Ok((info, &self.map[start..start + size]))
            }
            _ => candle_core::bail!(
                "{name}: {size} bytes at offset {} run past the end of the file ({} bytes)",
                info.offset,
                self.map.len()
            ),
        }
    }

    fn offset(&self, bytes: &[u8]) -> usize {
        bytes.as_ptr() as usize - self.map.as_ptr() as usize
    }

    /// The mapping that holds `bytes`, and where they start, for a tensor used where it lies:
    /// its pages mapped in now if the whole file was not, as llama.cpp's MAP_POPULATE does,
    /// not a fault at a time during the first run. (Asking again of mapped pages walks them
    /// one by one: 80 ms for a 1.1 GB file.) Advice only: a refusal changes nothing.
    fn mapped(&self, bytes: &[u8]) -> (SharedBytes, usize) {
        let offset = self.offset(bytes);
        if !self.populated {
            let _ = self
                .map
                .advise_range(memmap2::Advice::PopulateRead, offset, bytes.len());
        }
        (self.map.clone(), offset)
    }

    /// Drops a loaded tensor's pages from this process (the page cache keeps them).
    fn release(&self, bytes: &[u8]) {
        let offset = self.offset(bytes);
        // SAFETY: the mapping is read-only and file-backed: dropped pages read back the
        // same bytes if touched again. Advice only, so a refusal changes nothing.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len())
        };
    }

    /// A tensor as candle holds it, on the CPU.
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        let (info, bytes) = self.bytes(name)?;
        let blocks = match info.ggml_dtype {
            GgmlDType::F32 => self.copied::<f32>(bytes),
            GgmlDType::F16 => self.copied::<f16>(bytes),
            GgmlDType::BF16 => self.copied::<half::bf16>(bytes),
            GgmlDType::Q4_0 => self.copied::<BlockQ4_0>(bytes),
            GgmlDType::Q4_1 => self.copied::<BlockQ4_1>(bytes),
            GgmlDType::Q5_0 => self.copied::<BlockQ5_0>(bytes),
            GgmlDType::Q5_1 => self.copied::<BlockQ5_1>(bytes),
            GgmlDType::Q8_0 => self.copied::<BlockQ8_0>(bytes),
            GgmlDType::Q8_1 => self.copied::<BlockQ8_1>(bytes),
            GgmlDType::Q2K => self.copied::<BlockQ2K>(bytes),
            GgmlDType::Q3K => self.copied::<BlockQ3K>(bytes),
            GgmlDType::Q4K => self.copied::<BlockQ4K>(bytes),
            GgmlDType::Q5K => self.copied::<BlockQ5K>(bytes),
            GgmlDType::Q6K => self.copied::<BlockQ6K>(bytes),
            GgmlDType::Q8K => self.copied::<BlockQ8K>(bytes),
        };
        QTensor::new(QStorage::Cpu(blocks?), info.shape.clone())
    }

    /// `bytes` copied into candle's blocks of type `T` a few MiB at a time, each part's pages
    /// leaving this process once copied. Candle's own copy (`QStorage::from_data`) takes
    /// the tensor whole, so its mapped pages and the copy were held at once: 38 MiB more
    /// peak RSS for TinyLlama's Q6_K output on the portable path, which candle runs.
    fn copied<T: GgmlType + Send + Sync + 'static>(
        &self,
        bytes: &[u8],
    ) -> Result<Box<dyn QuantizedType>> {
        let size = std::mem::size_of::<T>();
        if size != T::DTYPE.type_size() || !bytes.len().is_multiple_of(size) {
            candle_core::bail!(
                "{} bytes are not whole {:?} blocks of {size} bytes",
                bytes.len(),
                T::DTYPE
            );
        }
        let mut blocks: Vec<T> = Vec::with_capacity(bytes.len() / size);
        for part in bytes.chunks(COPIED_BYTES / size * size) {
            // SAFETY: `part` is whole blocks, and the vector has room for all of `bytes`.
            // Candle's block types are `repr(C)` runs of bytes, f16s, an f32 and i16s, for
            // which any bits are a value: candle reads a file's bytes as blocks the same way.
            unsafe {
                let end = blocks.as_mut_ptr().add(blocks.len());
                std::ptr::copy_nonoverlapping(part.as_ptr(), end as *mut u8, part.len());
                blocks.set_len(blocks.len() + part.len() / size);
            }
            self.release(part);
        }
        Ok(Box::new(blocks))
    }

    /// A tensor repacked for fitbench's kernels, where its type and shape allow.
    fn tiles(&self, name: &str) -> Result<Option<Arc<dyn Repacked>>> {
        let (info, bytes) = self.bytes(name)?;
        let Ok((rows, k)) = info.shape.dims2() else {
            return Ok(None);
        };
        let tiles: Arc<dyn Repacked> = match Format::of(info.ggml_dtype) {
            Some(format) if in_place(format) && Tiles::fit(format, rows, k) => {
                let (map, offset) = self.mapped(bytes);
                Arc::new(InPlace::new(format, map, offset, rows, k)?)
            }
            Some(format) if Tiles::fit(format, rows, k) && ours(format) => {
                Arc::new(Tiles::new_releasing(format, bytes, rows, k, &|done| {
                    self.release(done)
                })?)
            }
            None if info.ggml_dtype == GgmlDType::F16 && HalfRows::fit(rows, k) => {
                let (map, offset) = self.mapped(bytes);
                Arc::new(HalfRows::new(map, offset, rows, k)?)
            }
            _ => return Ok(None),
        };
        Ok(Some(tiles))
    }

    pub fn linear(&self, name: &str) -> Result<Linear> {
        match self.tiles(name)? {
            Some(tiles) => Ok(Linear::Own(tiles)),
            None => Ok(Linear::Candle(QMatMul::from_qtensor(self.qtensor(name)?)?)),
        }
    }

    /// The token embedding `name`, and the output projection: `output` where the file has
    /// one, else the embedding itself (Llama 3.2, SmolLM2, Gemma), one copy serving both.
    pub fn embedding_and_output(&self, name: &str, output: &str) -> Result<(Embedding, Linear)> {
        let tied = !self.has(output);
        let in_place = self
            .content
            .tensor_infos
            .get(name)
            .is_some_and(|i| used_in_place(i.ggml_dtype));
        // Repacked once where it is the output too; used where it lies when it can be.
        let shared = if tied || in_place {
            self.tiles(name)?
        } else {
            None
        };
        if let Some(tiles) = shared {
            let embedding = Embedding {
                vocab: tiles.rows(),
                width: tiles.k(),
                rows: Rows::Tiled(tiles.clone()),
            };
            let output = if tied {
                Linear::Own(tiles)
            } else {
                self.linear(output)?
            };
            return Ok((embedding, output));
        }
        let table = Arc::new(self.qtensor(name)?);
        let output = if tied {
            Linear::Candle(QMatMul::from_arc(table.clone())?)
        } else {
            self.linear(output)?
        };
        Ok((Embedding::new(table)?, output))
    }
}

/// Whether fitbench's kernels run `format` here. Without x86 SIMD, candle's Q4_1, Q5_0 and
/// Q5_1 are plain loops on every CPU, and its Q4_0 and Q8_0 are too where it has no NEON
/// (an x86 box without AVX2, such as a Celeron J4125 or N5105): fitbench's portable kernels
/// beat those 3.5-5.0× on an x86-64 build for any CPU (`cargo bench --bench kernels --
/// portable`). Candle keeps the formats it has NEON paths for on a Pi (Q4_0, Q8_0 and the K
/// formats), and the K formats everywhere without SIMD: its plain loops for them ran 1.3-2.5×
/// as fast as the portable kernel.
fn ours(format: Format) -> bool {
    ours_with(format, Kernel::best(), cfg!(target_feature = "neon"))
}

/// [`ours`] with fitbench's best kernel `best`, where candle has NEON or not.
fn ours_with(format: Format, best: Kernel, candle_has_neon: bool) -> bool {
    best != Kernel::Portable
        || matches!(format, Format::Q4_1 | Format::Q5_0 | Format::Q5_1)
        || (!candle_has_neon && matches!(format, Format::Q4_0 | Format::Q8_0))
}

/// Whether the kernels use a matrix in `format` where it lies in the mapped file, as
/// llama.cpp does (repacking cost up to 20 times its load).
fn in_place(format: Format) -> bool {
    InPlace::used_for(format, Kernel::best()) && ours(format)
}

/// Types whose matrices are used in place: f16, and the formats [`in_place`] takes.
fn used_in_place(dtype: GgmlDType) -> bool {
    dtype == GgmlDType::F16 || Format::of(dtype).is_some_and(in_place)
}

/// A quantized weight matrix (out × in) applied to the last dimension of its input.
pub enum Linear {
    /// Repacked for fitbench's kernels, in place of the file's bytes.
    Own(Arc<dyn Repacked>),
    Candle(QMatMul),
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => m.forward(x),
            Linear::Own(tiles) => {
                let dims = x.dims();
                if dims.last() != Some(&tiles.k()) {
                    candle_core::bail!(
                        "a {}×{} matrix cannot multiply an input of shape {dims:?}",
                        tiles.rows(),
                        tiles.k()
                    );
                }
                let m = x.elem_count() / tiles.k();
                // Read in place: copying a prompt's input rows for each of a layer's seven
                // matrices was 2% of an F16 prompt pass.
                let x = x.contiguous()?;
                let (storage, layout) = x.storage_and_layout();
                let out = tiles.matmul(f32_values(&storage, layout)?, m)?;
                let mut shape = dims.to_vec();
                if let Some(last) = shape.last_mut() {
                    *last = tiles.rows();
                }
                Tensor::from_vec(out, shape, x.device())
            }
        }
    }

    /// The same input row through several linears: where every one uses fitbench's
    /// kernels, one pass over the pool streams all their matrices (q, k and v; gate and up).
    pub fn apply_each<const N: usize>(linears: [&Linear; N], x: &[f32]) -> Result<[Vec<f32>; N]> {
        let mut prepared = Vec::with_capacity(N);
        for linear in linears {
            if let Linear::Own(tiles) = linear {
                prepared.push(tiles.prepare(x)?);
            }
        }
        let results = if prepared.len() == N {
            let products: Vec<&dyn RowProduct> = prepared.iter().map(|p| p.as_ref()).collect();
            run_products(&products)
        } else {
            linears.iter().map(|l| l.apply(x)).collect::<Result<_>>()?
        };
        results
            .try_into()
            .map_err(|_| candle_core::Error::Msg("a product went missing".into()))
    }

    /// One input row times the transpose of the weights, with no tensor around it.
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        match self {
            Linear::Own(tiles) => tiles.matmul(x, 1),
            Linear::Candle(m) => m
                .forward(&Tensor::from_slice(x, (1, x.len()), &Device::Cpu)?)?
                .flatten_all()?
                .to_vec1(),
        }
    }
}

/// Root-mean-square normalization with a learned scale, as candle's `rms_norm` computes it,
/// on tensors or on one row of plain values.
pub struct RmsNorm {
    weight: Tensor,
    scale: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    pub fn from_qtensor(weight: QTensor, eps: f64) -> Result<RmsNorm> {
        let weight = weight.dequantize(&Device::Cpu)?;
        Ok(RmsNorm {
            scale: weight.flatten_all()?.to_vec1()?,
            weight,
            eps: eps as f32,
        })
    }

    /// Normalizes the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }

    /// `x`, rows of the norm's width (a vector, or one per head), each normalized.
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        let width = self.scale.len();
        if width == 0 || !x.len().is_multiple_of(width) {
            candle_core::bail!("a norm of {width} values cannot take {} values", x.len());
        }
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(width) {
            let squares: f32 = super::ops::lanes(row, 0.0, |sum, v| sum + v * v)
                .iter()
                .sum();
            let rms = (squares / width as f32 + self.eps).sqrt();
            out.extend(row.iter().zip(&self.scale).map(|(v, s)| v / rms * s));
        }
        Ok(out)
    }
}

/// `x += y`, value by value.
pub fn add(x: &mut [f32], y: &[f32]) -> Result<()> {
    if x.len() != y.len() {
        candle_core::bail!("cannot add {} values to {}", y.len(), x.len());
    }
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
    Ok(())
}

/// The token embedding, kept in its quantized form: rows are dequantized as tokens are
/// looked up, instead of holding vocab × width f32 values (2.1 GB for Llama 3 8B).
pub struct Embedding {
    rows: Rows,
    vocab: usize,
    pub width: usize,
}

enum Rows {
    Quantized {
        table: Arc<QTensor>,
        dtype: GgmlDType,
        row_bytes: usize,
    },
    /// Shared with a tied output projection.
    Tiled(Arc<dyn Repacked>),
}

impl Embedding {
    pub fn new(table: Arc<QTensor>) -> Result<Embedding> {
        let (vocab, width) = table.shape().dims2()?;
        let dtype = table.dtype();
        if width % dtype.block_size() != 0 {
            candle_core::bail!("token_embd.weight: a row of {width} is not whole {dtype:?} blocks");
        }
        let row_bytes = width / dtype.block_size() * dtype.type_size();
        Ok(Embedding {
            rows: Rows::Quantized {
                table,
                dtype,
                row_bytes,
            },
            vocab,
            width,
        })
    }

    /// The rows of `ids`, dequantized: (batch, seq, width).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq_len) = ids.dims2()?;
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let mut values = vec![0f32; ids.len() * self.width];
        for (id, out) in ids.into_iter().zip(values.chunks_exact_mut(self.width)) {
            self.row(id, out)?;
        }
        Tensor::from_vec(values, (batch, seq_len, self.width), &Device::Cpu)
    }

    /// Token `id`'s row, dequantized into `out` (width values).
    pub fn row(&self, id: u32, out: &mut [f32]) -> Result<()> {
        let id = id as usize;
        if id >= self.vocab {
            candle_core::bail!(
                "token id {id} is outside the {} token vocabulary",
                self.vocab
            );
        }
        match &self.rows {
            Rows::Tiled(tiles) => tiles.dequantize_row(id, out),
            Rows::Quantized {
                table,
                dtype,
                row_bytes,
            } => {
                let data = table.data()?;
                let bytes = &data[id * row_bytes..(id + 1) * row_bytes];
                let row = QTensor::new(
                    QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, *dtype)?,
                    (1, self.width),
                )?;
                let values: Vec<f32> = row.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
                if out.len() != values.len() {
                    candle_core::bail!(
                        "an embedding row of {} values cannot fill {}",
                        values.len(),
                        out.len()
                    );
                }
                out.copy_from_slice(&values);
                Ok(())
            }
        }
    }
}

/// cos and sin for positions 0..positions at one base frequency.
#[derive(Debug, Clone)]
pub struct Rope {
    /// positions × dim/2, row-major.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Pairs (2i, 2i+1), as llama writes its GGUFs; otherwise (i, i + d/2).
    interleaved: bool,
}

impl Rope {
    pub fn new(dim: usize, frequency: f32, positions: usize, interleaved: bool) -> Rope {
        let theta: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1f32 / frequency.powf(i as f32 / dim as f32))
            .collect();
        let angles: Vec<f32> = (0..positions.max(1))
            .flat_map(|p| theta.iter().map(move |t| p as f32 * t))
            .collect();
        Rope {
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
            interleaved,
        }
    }

    /// Rotates `x`, heads of `dim` values at one position, `pos`.
    pub fn rotate(&self, x: &[f32], dim: usize, pos: usize) -> Result<Vec<f32>> {
        let half = dim / 2;
        let at = pos * half;
        if dim == 0
            || !dim.is_multiple_of(2)
            || !x.len().is_multiple_of(dim)
            || at + half > self.cos.len()
        {
            candle_core::bail!(
                "cannot rotate {} values in heads of {dim} at position {pos} with {} table values",
                x.len(),
                self.cos.len()
            );
        }
        let table = (&self.cos[at..at + half], &self.sin[at..at + half]);
        let mut out = vec![0f32; x.len()];
        for (head, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            super::ops::rotate_head(head, table, self.interleaved, out);
        }
        Ok(out)
    }

    /// Rotates `x` (batch, seq, heads, dim) for positions `pos..`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        super::ops::apply(
            x,
            &super::ops::Rotate {
                cos: &self.cos,
                sin: &self.sin,
                pos,
                interleaved: self.interleaved,
            },
        )
    }
}

/// Query rows a prompt's attention takes at a time (see [`SelfAttention::attend`]).
const QUERY_CHUNK: usize = 128;
/// Query rows from which attention runs on fitbench's panel kernels.
const PANEL_QUERIES: usize = 16;

/// The f32 values of a contiguous CPU tensor's storage.
fn f32_values<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("expected contiguous f32 values on the CPU"),
    }
}

/// Cached keys or values, (batch, head, position, dim) with room for `capacity` positions
/// a head: appending a token copies one token, not the whole cache. Held as f16, as
/// llama.cpp's default KV cache holds them: half the memory of f32, and half the bytes a
/// token reads back at depth.
struct Cache {
    values: Vec<f16>,
    batch: usize,
    heads: usize,
    dim: usize,
    capacity: usize,
    len: usize,
}

impl Cache {
    fn new(heads: usize, dim: usize, capacity: usize) -> Cache {
        Cache {
            values: Vec::new(),
            batch: 1,
            heads,
            dim,
            capacity: capacity.max(1),
            len: 0,
        }
    }

    /// Appends `x`, (batch, seq, heads, dim), after the `pos` positions held: the first
    /// position empties the cache.
    fn append(&mut self, x: &[f32], batch: usize, pos: usize) -> Result<()> {
        let per_position = batch * self.heads * self.dim;
        if pos == 0 {
            if batch != self.batch {
                // Sized for another batch: allocated again below.
                self.values = Vec::new();
            }
            (self.len, self.batch) = (0, batch);
        }
        if pos != self.len || batch != self.batch || per_position == 0 {
            candle_core::bail!(
                "cannot append a batch of {batch} at position {pos} to a cache of {} positions for a batch of {}",
                self.len,
                self.batch
            );
        }
        if !x.len().is_multiple_of(per_position) {
            candle_core::bail!(
                "{} values are not whole positions of {} heads of {}",
                x.len(),
                batch * self.heads,
                self.dim
            );
        }
        let seq_len = x.len() / per_position;
        if self.values.is_empty() || self.len + seq_len > self.capacity {
            self.grow(self.capacity.max((self.len + seq_len).next_power_of_two()));
        }
        let dim = self.dim;
        for (i, values) in x.chunks_exact(dim).enumerate() {
            let (b, s, h) = (
                i / (seq_len * self.heads),
                i / self.heads % seq_len,
                i % self.heads,
            );
            let at = ((b * self.heads + h) * self.capacity + self.len + s) * dim;
            self.values[at..at + dim].convert_from_f32_slice(values);
        }
        self.len += seq_len;
        Ok(())
    }

    /// Room for `capacity` positions, the held ones kept.
    fn grow(&mut self, capacity: usize) {
        let rows = self.batch * self.heads;
        let mut values = vec![f16::ZERO; rows * capacity * self.dim];
        let held = self.len * self.dim;
        if held > 0 {
            for (new, old) in values
                .chunks_exact_mut(capacity * self.dim)
                .zip(self.values.chunks_exact(self.capacity * self.dim))
            {
                new[..held].copy_from_slice(&old[..held]);
            }
        }
        (self.values, self.capacity) = (values, capacity);
    }

    fn strided(&self) -> Strided<'_> {
        Strided {
            values: &self.values,
            strides: [
                self.heads * self.capacity * self.dim,
                self.capacity * self.dim,
                self.dim,
            ],
        }
    }

    /// The held positions as a (batch, heads, positions, dim) f32 tensor, for candle's
    /// matmuls.
    fn tensor(&self) -> Result<Tensor> {
        let (held, dim) = (self.len * self.dim, self.dim);
        let mut values = Vec::with_capacity(self.batch * self.heads * held);
        for row in self.values.chunks_exact(self.capacity * dim) {
            values.extend(row[..held].iter().map(|&v| widen_half(v)));
        }
        Tensor::from_vec(
            values,
            (self.batch, self.heads, self.len, dim),
            &Device::Cpu,
        )
    }
}

/// Keys or values read through their strides (the cache holds room for later positions),
/// dim contiguous.
struct Strided<'a> {
    values: &'a [f16],
    strides: [usize; 3],
}

impl Strided<'_> {
    fn get(&self, batch: usize, head: usize, position: usize, i: usize) -> f32 {
        let [s0, s1, s2] = self.strides;
        widen_half(self.values[batch * s0 + head * s1 + position * s2 + i])
    }

    /// The rows at (batch, head, `positions`), one after another (a position's row is the
    /// cache's whole dim, so they lie side by side).
    fn rows(&self, batch: usize, head: usize, positions: std::ops::Range<usize>) -> &[f16] {
        let [s0, s1, s2] = self.strides;
        &self.values[batch * s0 + head * s1 + positions.start * s2..][..positions.len() * s2]
    }
}

/// What the attentions run on candle's pool read: the queries' shape, values and positions,
/// and the cache's keys and values.
struct Inputs<'a> {
    b: usize,
    n_head: usize,
    seq_len: usize,
    dim: usize,
    /// Query heads per key-value head.
    group: usize,
    kv_heads: usize,
    queries: &'a [f32],
    keys_at: Strided<'a>,
    values_at: Strided<'a>,
    /// The first query's position.
    pos: usize,
    /// How many positions before its own a query sees, if not all.
    window: Option<usize>,
}

/// One attention layer's head layout and KV cache: what llama and Gemma 3 share.
pub struct SelfAttention {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    keys: Cache,
    values: Cache,
}

impl SelfAttention {
    /// `positions`: how many tokens the run will hold (the cache grows past it if need be).
    pub fn new(
        n_head: usize,
        n_kv_head: usize,
        head_dim: usize,
        positions: usize,
    ) -> SelfAttention {
        SelfAttention {
            n_head,
            n_kv_head,
            head_dim,
            keys: Cache::new(n_kv_head, head_dim, positions),
            values: Cache::new(n_kv_head, head_dim, positions),
        }
    }

    /// (batch, seq, n × head_dim) → (batch, seq, n, head_dim).
    pub fn split(&self, projected: Tensor, n: usize) -> Result<Tensor> {
        let (b, seq_len, _) = projected.dims3()?;
        projected.reshape((b, seq_len, n, self.head_dim))
    }

    /// Appends `k` and `v` (batch, seq, n_kv, head_dim; at positions `pos..`) to the cache,
    /// then softmax(q·kᵀ/√d)·v, each query seeing the positions up to its own (and no more
    /// than `window` before it); the heads merged back: (batch, seq, width).
    pub fn attend(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        self.attend_with(Kernel::best(), q, k, v, pos, window)
    }

    /// [`SelfAttention::attend`] with `kernel` for prompts' panels: the portable one keeps
    /// candle's matmuls.
    fn attend_with(
        &mut self,
        kernel: Kernel,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (b, seq_len, _, _) = q.dims4()?;
        if k.dims() != v.dims() {
            candle_core::bail!("keys {:?} and values {:?} differ", k.dims(), v.dims());
        }
        let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
        self.keys.append(&flat(k)?, b, pos)?;
        self.values.append(&flat(v)?, b, pos)?;
        let q = q.transpose(1, 2)?.contiguous()?;
        if seq_len < PANEL_QUERIES {
            return self.on_pool(&q, (pos, window), |inputs| inputs.attend_each(kernel));
        }
        if kernel != Kernel::Portable {
            return self.on_pool(&q, (pos, window), |inputs| inputs.attend_in_panels(kernel));
        }
        let (k, v) = (self.keys.tensor()?, self.values.tensor()?);
        // Each key-value head serves `group` query heads (heads are numbered kv-major): the
        // queries are grouped by it instead of the cache being copied `group` times.
        let group = self.n_head / self.n_kv_head;
        // Queries in chunks, each against only the keys it can see: a prompt's scores are
        // half masked, and a chunk skips the keys past its last query.
        let mut chunks = Vec::with_capacity(seq_len.div_ceil(QUERY_CHUNK));
        for start in (0..seq_len).step_by(QUERY_CHUNK) {
            let len = QUERY_CHUNK.min(seq_len - start);
            let keys = pos + start + len;
            let q = q.narrow(2, start, len)?.contiguous()?.reshape((
                b,
                self.n_kv_head,
                group * len,
                self.head_dim,
            ))?;
            let softmax = super::ops::CausalSoftmax {
                scale: 1.0 / (self.head_dim as f32).sqrt(),
                seq_len: len,
                pos: pos + start,
                window,
            };
            let chunk = q
                .matmul(&k.narrow(2, 0, keys)?.t()?)?
                .apply_op1_no_bwd(&softmax)?
                .matmul(&v.narrow(2, 0, keys)?)?
                .reshape((b, self.n_head, len, self.head_dim))?;
            chunks.push(chunk);
        }
        Tensor::cat(&chunks, 2)?
            .transpose(1, 2)?
            .reshape((b, seq_len, self.n_head * self.head_dim))
    }

    /// `attend` (one of the attentions run on candle's pool) over `q` (batch, heads, seq,
    /// dim), contiguous, at positions `pos..` seeing `window` back, and the cache: the heads
    /// merged back, (batch, seq, width).
    fn on_pool(
        &self,
        q: &Tensor,
        (pos, window): (usize, Option<usize>),
        attend: impl FnOnce(&Inputs) -> Result<Vec<f32>>,
    ) -> Result<Tensor> {
        let (b, n_head, seq_len, dim) = q.dims4()?;
        let (q_storage, q_layout) = q.storage_and_layout();
        let queries = f32_values(&q_storage, q_layout)?;
        let result = attend(&self.inputs(queries, (b, seq_len), pos, window)?)?;
        Tensor::from_vec(result, (b, seq_len, n_head * dim), q.device())
    }

    /// What the pool's attentions read, for `queries` (batch, heads, seq, dim).
    fn inputs<'a>(
        &'a self,
        queries: &'a [f32],
        (b, seq_len): (usize, usize),
        pos: usize,
        window: Option<usize>,
    ) -> Result<Inputs<'a>> {
        if queries.len() != b * seq_len * self.n_head * self.head_dim
            || self.keys.len != pos + seq_len
        {
            candle_core::bail!(
                "{} query values are not {seq_len} positions of {} heads of {} after {pos} cached",
                queries.len(),
                self.n_head,
                self.head_dim
            );
        }
        Ok(Inputs {
            b,
            n_head: self.n_head,
            seq_len,
            dim: self.head_dim,
            group: self.n_head / self.n_kv_head,
            kv_heads: self.n_kv_head,
            queries,
            keys_at: self.keys.strided(),
            values_at: self.values.strided(),
            pos,
            window,
        })
    }

    /// One token's attention at `pos`, batch of one, on plain values: `q` (heads × dim, RoPE
    /// applied), `k` and `v` (key-value heads × dim) appended to the cache; width values.
    pub fn attend_one(
        &mut self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        pos: usize,
        window: Option<usize>,
    ) -> Result<Vec<f32>> {
        if k.len() != v.len() {
            candle_core::bail!("{} key values but {} values", k.len(), v.len());
        }
        self.keys.append(k, 1, pos)?;
        self.values.append(v, 1, pos)?;
        self.inputs(q, (1, 1), pos, window)?
            .attend_each(Kernel::best())
    }

    pub fn clear(&mut self) {
        self.keys.len = 0;
        self.values.len = 0;
    }
}

impl Inputs<'_> {
    /// Query `position`'s values for `head`.
    fn query(&self, batch: usize, head: usize, position: usize) -> &[f32] {
        let dim = self.dim;
        &self.queries[((batch * self.n_head + head) * self.seq_len + position) * dim..][..dim]
    }

    /// The first key the query at `last` sees.
    fn first_visible(&self, last: usize) -> usize {
        self.window.map_or(0, |w| last.saturating_sub(w))
    }

    fn width(&self) -> usize {
        self.n_head * self.dim
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dim as f32).sqrt()
    }

    /// Attention for a few queries (generation's one) across candle's pool, one (batch,
    /// key-value head, query) at a time: the group's query heads against each key it can
    /// see, the softmax, then the values' weighted sum, written straight into the (batch,
    /// seq, width) result. candle's matmuls packed each head's one query row and ran it
    /// through a gemm on the main thread while the pool waited: 4% of TinyLlama's
    /// generation time (perf).
    fn attend_each(&self, kernel: Kernel) -> Result<Vec<f32>> {
        let (group, kv_heads, seq_len, dim) = (self.group, self.kv_heads, self.seq_len, self.dim);
        let mut result = vec![0f32; self.b * seq_len * self.width()];
        let out = result.as_mut_ptr() as usize;
        let attend_query = |item: usize| {
            let (batch, kv, s) = (
                item / (kv_heads * seq_len),
                item / seq_len % kv_heads,
                item % seq_len,
            );
            let last = self.pos + s;
            let first = self.first_visible(last);
            let keys = last + 1 - first;
            let query = |g: usize| self.query(batch, kv * group + g, s);
            let mut scores = vec![0f32; group * keys];
            let key_rows = self.keys_at.rows(batch, kv, first..last + 1);
            for (g, scores) in scores.chunks_exact_mut(keys).enumerate() {
                dot_half_rows(kernel, query(g), key_rows, scores);
            }
            let mut weights = vec![0f32; scores.len()];
            for (scores, weights) in scores
                .chunks_exact(keys)
                .zip(weights.chunks_exact_mut(keys))
            {
                super::ops::softmax(self.scale(), scores, weights);
            }
            // SAFETY: this item's query heads are `group` runs of `dim` values from `at` in
            // result row (batch, s), which no other item writes, and `result` outlives the
            // pool call.
            let at = (batch * seq_len + s) * self.width() + kv * group * dim;
            let outputs =
                unsafe { std::slice::from_raw_parts_mut((out as *mut f32).add(at), group * dim) };
            let value_rows = self.values_at.rows(batch, kv, first..last + 1);
            weighted_sum_rows(kernel, &weights, value_rows, dim, outputs);
        };
        candle_core::utils::barrier_pool().execute_chunked(self.b * kv_heads * seq_len, |items| {
            items.for_each(attend_query)
        });
        Ok(result)
    }

    /// Prompt attention on fitbench's panel kernels, one (batch, key-value head, query
    /// chunk) at a time across candle's pool: the chunk's scores against panels of 32 keys,
    /// the causal softmax, then its heads' outputs against panels of 32 value dimensions,
    /// written straight into the (batch, seq, width) result. candle's matmuls ran these on
    /// rayon's threads with AVX2 only, while candle's own pool spun beside them.
    fn attend_in_panels(&self, kernel: Kernel) -> Result<Vec<f32>> {
        let (group, kv_heads, seq_len, dim) = (self.group, self.kv_heads, self.seq_len, self.dim);
        let chunks = seq_len.div_ceil(QUERY_CHUNK);
        let mut result = vec![0f32; self.b * seq_len * self.width()];
        let out = result.as_mut_ptr() as usize;
        let failure = std::sync::Mutex::new(None);
        let attend_chunk = |item: usize| -> Result<()> {
            let (batch, kv, chunk) = (
                item / (kv_heads * chunks),
                item / chunks % kv_heads,
                item % chunks,
            );
            let start = chunk * QUERY_CHUNK;
            let len = QUERY_CHUNK.min(seq_len - start);
            let keys = self.pos + start + len;
            let rows: Vec<&[f32]> = (0..group * len)
                .map(|row| self.query(batch, kv * group + row / len, start + row % len))
                .collect();
            let mut scores = vec![0f32; rows.len() * keys];
            let mut panel = Panel::new(dim);
            for first in (0..keys).step_by(PANEL_ROWS) {
                panel.fill_with(keys - first, |r, i| {
                    self.keys_at.get(batch, kv, first + r, i)
                });
                // SAFETY: the scores are rows.len() × keys; the panel writes keys
                // first..first + 32 of each row.
                unsafe { panel.multiply(kernel, &rows, scores.as_mut_ptr().add(first), keys)? };
            }
            let mut weights = vec![0f32; scores.len()];
            for (row, (scores, weights)) in scores
                .chunks_exact(keys)
                .zip(weights.chunks_exact_mut(keys))
                .enumerate()
            {
                let last = self.pos + start + row % len;
                let first = self.first_visible(last);
                super::ops::softmax(
                    self.scale(),
                    &scores[first..=last],
                    &mut weights[first..=last],
                );
            }
            let weights: Vec<&[f32]> = weights.chunks_exact(keys).collect();
            let mut panel = Panel::new(keys);
            for first in (0..dim).step_by(PANEL_ROWS) {
                panel.fill_with(dim - first, |r, i| {
                    self.values_at.get(batch, kv, i, first + r)
                });
                for (g, weights) in weights.chunks_exact(len).enumerate() {
                    let head = kv * group + g;
                    let at = ((batch * seq_len + start) * self.n_head + head) * dim + first;
                    // SAFETY: this chunk's queries of `head` are result rows start..start +
                    // len (`width` apart), of which the panel writes values at..at + 32 of
                    // `head`'s dim; no other item writes them, and `result` outlives the
                    // pool call.
                    unsafe {
                        panel.multiply(kernel, weights, (out as *mut f32).add(at), self.width())?
                    };
                }
            }
            Ok(())
        };
        candle_core::utils::barrier_pool().execute_chunked(self.b * kv_heads * chunks, |items| {
            for item in items {
                if let Err(error) = attend_chunk(item) {
                    if let Ok(mut failure) = failure.lock() {
                        *failure = Some(error);
                    }
                }
            }
        });
        if let Ok(Some(error)) = failure.into_inner() {
            return Err(error);
        }
        Ok(result)
    }
}

/// A GGUF metadata value for `arch.key`, with the key named when it is missing.
pub fn metadata<'a>(
    content: &'a gguf_file::Content,
    arch: &str,
    key: &str,
) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(&format!("{arch}.{key}"))
        .ok_or_else(|| candle_core::Error::Msg(format!("cannot find {arch}.{key} in metadata")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn candle_keeps_only_what_it_runs_faster() {
        use Format::*;
        let simd = [Kernel::Avx2, Kernel::Avx512Vnni];
        for format in Format::ALL {
            // With x86 SIMD, fitbench's kernels run every format.
            assert!(
                simd.iter().all(|&k| ours_with(format, k, false)),
                "{format:?}"
            );
            // On a Pi, candle's NEON paths keep Q4_0, Q8_0 and the K formats.
            let neon = ours_with(format, Kernel::Portable, true);
            assert_eq!(
                neon,
                matches!(format, Q4_1 | Q5_0 | Q5_1),
                "{format:?} with NEON"
            );
            // Without any SIMD, only the K formats, whose plain loops beat the portable kernel.
            let plain = ours_with(format, Kernel::Portable, false);
            assert_eq!(plain, !format.is_k(), "{format:?} without SIMD");
        }
        // Q4_0 is tiles for the SIMD kernels and in place for the portable one; Q4_K is tiles.
        assert!(InPlace::used_for(Q4_0, Kernel::Portable));
        assert!(simd.iter().all(|&k| !InPlace::used_for(Q4_0, k)));
        assert!(!InPlace::used_for(Q4K, Kernel::Portable));
        assert!(InPlace::used_for(Q6K, Kernel::Avx512Vnni));
    }

    /// softmax(q·kᵀ/√d)·v one query and head at a time, for (positions, heads, dim) inputs.
    fn reference(
        (q, k, v): (&[f32], &[f32], &[f32]),
        (heads, kv_heads, dim): (usize, usize, usize),
        positions: usize,
        window: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; positions * heads * dim];
        for p in 0..positions {
            for h in 0..heads {
                let kv = h / (heads / kv_heads);
                let query = &q[(p * heads + h) * dim..][..dim];
                let first = window.map_or(0, |w| p.saturating_sub(w));
                let scores: Vec<f32> = (first..=p)
                    .map(|j| {
                        let key = &k[(j * kv_heads + kv) * dim..][..dim];
                        let dot: f32 = query.iter().zip(key).map(|(a, b)| a * b).sum();
                        dot / (dim as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = weights.iter().sum();
                for (j, w) in (first..=p).zip(&weights) {
                    let value = &v[(j * kv_heads + kv) * dim..][..dim];
                    for (o, x) in out[(p * heads + h) * dim..][..dim].iter_mut().zip(value) {
                        *o += w / total * x;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_over_several_query_chunks_matches_masked_attention() -> Result<()> {
        let (heads, kv_heads, dim) = (4, 2, 8);
        // A prompt of more than two chunks, then three tokens at once and two one at a time.
        let (prompt, more) = (2 * QUERY_CHUNK + 44, 5);
        let positions = prompt + more;
        let random = |n: usize| Tensor::randn(0f32, 1.0, (1, positions, n, dim), &Device::Cpu);
        let (q, k, v) = (random(heads)?, random(kv_heads)?, random(kv_heads)?);
        // The portable kernel keeps candle's matmuls; the best one here takes panels. A cache
        // made for one position grows as the tokens come.
        for (window, kernel, capacity) in [None, Some(100)].into_iter().flat_map(|w| {
            [
                (w, Kernel::Portable, positions),
                (w, Kernel::best(), positions),
                (w, Kernel::best(), 1),
            ]
        }) {
            let mut attention = SelfAttention::new(heads, kv_heads, dim, capacity);
            let mut outputs = Vec::new();
            for (pos, len) in [(0, prompt), (prompt, 3), (prompt + 3, 1), (prompt + 4, 1)] {
                let part = |x: &Tensor| x.narrow(1, pos, len);
                let (q, k, v) = (part(&q)?, part(&k)?, part(&v)?);
                // Generation's tokens take the plain-values path too.
                let output = if len == 1 && kernel != Kernel::Portable {
                    let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
                    let (q, k, v) = (flat(&q)?, flat(&k)?, flat(&v)?);
                    let one = attention.attend_one((&q, &k, &v), pos, window)?;
                    Tensor::from_vec(one, (1, 1, heads * dim), &Device::Cpu)?
                } else {
                    attention.attend_with(kernel, &q, &k, &v, pos, window)?
                };
                outputs.push(output);
            }
            let ours: Vec<f32> = Tensor::cat(&outputs, 1)?.flatten_all()?.to_vec1()?;
            let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
            // The cache holds keys and values as f16: the reference takes them so rounded.
            let as_cached = |x: &Tensor| x.to_dtype(DType::F16)?.to_dtype(DType::F32);
            let (q, k, v) = (flat(&q)?, flat(&as_cached(&k)?)?, flat(&as_cached(&v)?)?);
            let expected = reference((&q, &k, &v), (heads, kv_heads, dim), positions, window);
            let worst = ours
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4,
                "window {window:?}, {kernel:?}, room for {capacity}: off by {worst}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_cache_keeps_positions_in_order_and_starts_over_for_a_new_batch() -> Result<()> {
        let mut attention = SelfAttention::new(2, 1, 4, 8);
        let token = |x: f32| vec![x; 4];
        let (q, k, v) = (vec![1f32; 8], token(1.0), token(2.0));
        attention.attend_one((&q, &k, &v), 0, None)?;
        // Position 2 would leave position 1 unfilled; position 1 twice would double it.
        assert!(attention.attend_one((&q, &k, &v), 2, None).is_err());
        attention.attend_one((&q, &k, &v), 1, None)?;
        assert!(attention.attend_one((&q, &k, &v), 1, None).is_err());
        // A new run starts at 0; a token's values of the wrong width are refused.
        let out = attention.attend_one((&q, &k, &token(3.0)), 0, None)?;
        assert_eq!(out, vec![3f32; 8]);
        assert!(attention
            .attend_one((&q, &k, &token(3.0)[..3]), 1, None)
            .is_err());
        // A run of a batch of three starts over in a cache sized for it.
        let batch = |x: f32, heads: usize| Tensor::full(x, (3, 1, heads, 4), &Device::Cpu);
        let out = attention.attend(&batch(1.0, 2)?, &batch(1.0, 1)?, &batch(5.0, 1)?, 0, None)?;
        assert_eq!(out.flatten_all()?.to_vec1::<f32>()?, vec![5f32; 3 * 8]);
        Ok(())
    }
}
