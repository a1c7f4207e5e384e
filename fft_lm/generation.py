"""Byte generation for every model family: overlap-save streaming or full recompute.

    out = fft_lm.generate(model, b"Once upon", 200, mode="overlap_save", temperature=0.8, top_k=40, seed=0)

Modes
  "recompute"     every step runs the model over the whole context (prompt + bytes so far), no cache.
                  Cost per step grows with the context: the "leaky faucet".
  "overlap_save"  the model's streaming cache (`model.init_cache`) holds what each layer needs from
                  the past (SpectralLM: the last kernel_len-1 inputs of each conv, i.e. the exact
                  overlap-save state; GPT: the KV cache); each step feeds only the new bytes.
                  Exact: greedy output is byte-identical to "recompute".

Models that emit several bytes per backbone step (ChunkLM, recognised by a `decode_logits` method
and a `chunk` attribute) run the backbone once per chunk and then their small chunk decoder over the
chunk, one byte at a time; every other model emits one byte per step. A ChunkLM decodes its whole
chunk (every slot, decoder layer and byte pick) in one fft_tensor.chunk_decode call (FUSED_CHUNK_DECODE
below; one kernel launch on CUDA instead of ~40 per byte); otherwise, `chunk` decoder calls. The op
keeps activations in float32 even under autocast (the module rounds them to bf16 there), so under
autocast the two can pick different bytes at a near-tie; both modes use the same one, so overlap-save
still equals recompute.

Conventions
  - The result holds only the new bytes (not the prompt).
  - Empty prompt: the model is conditioned on a single newline byte b"\\n" (BOS_BYTE), the usual
    boundary in byte-level text corpora. That byte is not part of the result.
  - Prompts longer than the model's training seq_len are fine: the conv model has no position
    limit and GPT uses RoPE; both modes see the full context.
  - temperature=0 is greedy (argmax). Otherwise logits / temperature, optional top-k filter, and
    inverse-CDF sampling in float64 on the model's device with one uniform per new byte, all drawn
    up front from a CPU torch.Generator seeded with `seed`: a seed gives the same bytes in both
    modes and on any device (barring a draw within float64 rounding of a CDF step).
  - Nothing waits for the host between steps: each byte is picked on the device and written into
    the device-side sequence the next step reads; ByteStream.out copies the new bytes to the host
    when it is read.

Low-precision weights (under torch.autocast on CUDA in bfloat16 or float16)
  A step at batch 1 reads every weight once, and autocast casts each nn.Linear weight from float32
  on every call (one extra kernel and a float32 read per weight; a CUDA graph cannot keep autocast's
  cast cache). The stream runs a copy of the model whose nn.Linear weights and biases are stored in
  the autocast dtype (`low_precision_copy`), made once per stream: autocast would have cast them to
  the same values, so the output is the same bits. Parameters any other module shares (tied
  embeddings) stay float32. LOW_PRECISION_WEIGHTS below is the switch.

CUDA graphs (cuda_graphs=None: on for CUDA models unless CUDA_GRAPHS below is False)
  A streaming step is fixed-shape and tiny (one byte, or one chunk, through every layer), so eager
  PyTorch spends it launching a few hundred small kernels from Python. StepGraphs records each
  fixed-shape step once into a torch.cuda.CUDAGraph and replays it: the streaming step of every
  family with its byte pick (SpectralLM / ChunkLM backbone through the overlap-save cache, whose
  tails are updated in place, see fft_lm.model.SpectralCache; the GPT through its KV cache, which
  writes at and attends up to a position it reads from device memory over a buffer sized for the
  whole stream, see fft_lm.gpt.KVCache), and the ChunkLM decoder's whole chunk (one chunk_decode
  call, or `chunk` decoder calls, each pick feeding the next slot; also in recompute mode: the
  decoder is the same there).
  The prefill and full recompute stay eager. Replays run the same kernels on the
  same values as eager stepping, so the output is the same bytes.
"""
import copy
import warnings

import torch
import torch.nn as nn

from fft_tensor.ops import MIN_TEMPERATURE


BOS_BYTE = 0x0A  # context used for an empty prompt
MODES = ("overlap_save", "recompute")
CUDA_GRAPHS = True  # what cuda_graphs=None means on CUDA: the one switch for the graph path
LOW_PRECISION_WEIGHTS = True  # autocast on CUDA: run a copy with nn.Linear weights in the autocast dtype
FUSED_CHUNK_DECODE = True  # a ChunkLM's chunk through fft_tensor.chunk_decode (one kernel) instead of chunk decoder calls
GRAPH_WARMUP_CALLS = 3  # eager calls on a side stream before recording (lazy inits, cuBLAS handles)


def _check_args(prompt, max_new_bytes, mode, temperature, top_k, seed):
    if not isinstance(prompt, (bytes, bytearray)):
        raise TypeError(f"generate: prompt must be bytes, got {type(prompt).__name__} "
                        "(encode text first, e.g. 'hello'.encode('utf-8'))")
    if isinstance(max_new_bytes, bool) or not isinstance(max_new_bytes, int) or max_new_bytes < 0:
        raise ValueError(f"generate: max_new_bytes must be an int >= 0, got {max_new_bytes!r}")
    if mode not in MODES:
        raise ValueError(f"generate: mode must be one of {MODES}, got {mode!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
            or not (temperature == 0 or MIN_TEMPERATURE <= temperature < float("inf")):
        raise ValueError(f"generate: temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, "
                         f"got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 256):
        raise ValueError(f"generate: top_k must be None or an int in 1..256, got {top_k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"generate: seed must be None or an int, got {seed!r}")


def sample_bytes(logits, uniforms, temperature=1.0, top_k=None):
    """Bytes (N,) int64 drawn from logits (N, 256): argmax when temperature == 0, else softmax(logits /
    temperature) over the top_k largest (all when None; logits tied with the k-th largest are kept too,
    as in the fused chunk_decode), by inverse CDF in float64 at the uniforms (N,) in [0, 1). Runs on
    the logits' device with no host sync (CUDA graphs record it)."""
    if logits.dim() != 2 or uniforms.shape != logits.shape[:1]:
        raise ValueError(f"sample_bytes: expected logits (N, V) and uniforms (N,), got logits {tuple(logits.shape)} "
                         f"and uniforms {tuple(uniforms.shape)}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.double() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    # right side: the first byte whose cumulative mass exceeds u * total (so a zero-mass byte is never drawn)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(scores.shape[-1] - 1)


def draw_uniforms(n, seed=None):
    """n float64 uniforms in [0, 1) from a CPU generator seeded with seed (the global CPU RNG when None)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.rand(n, generator=gen, dtype=torch.float64)


def low_precision_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of model for inference under autocast(dtype): nn.Linear weights and biases stored in dtype
    (what autocast casts them to on every call), everything else as it is. Parameters that a module
    other than an nn.Linear also holds (a tied embedding) are left alone."""
    clone = copy.deepcopy(model)
    shared = {id(p) for m in clone.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for m in clone.modules():
            if isinstance(m, nn.Linear):
                for name, p in m.named_parameters(recurse=False):
                    if id(p) not in shared and p.dtype != dtype:
                        setattr(m, name, nn.Parameter(p.to(dtype), requires_grad=False))
    return clone.eval()


def is_chunk_model(model):
    return hasattr(model, "decode_logits") and getattr(model, "chunk", 1) > 1


def _autocast_state(device_type):
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class StepGraphs:
    """CUDA graphs of fixed-shape generation steps, one per key (what is run, input shapes, autocast).

    run(key, fn, *inputs) returns fn(*inputs). The first call for a key records it: copies of the
    inputs become the graph's static inputs, fn runs GRAPH_WARMUP_CALLS times on a side stream and
    once more under capture. Later calls copy the inputs in and replay. fn may read and update the
    streaming cache in place (a SpectralCache's tails, a KVCache's buffers and device position: the
    tensors its state_tensors() lists, which must not move); the warm-up calls really run, so the
    cache's snapshot() is taken before recording and restored after. A new address among its
    graph_tensors() (the state plus what steps only read, e.g. cached kernel taps) means recording
    again. fn's result is the graph's static output:
    overwritten by the next replay of the same key, so use it before then.
    Autocast is recorded as it is when a key is first seen (part of the key); its weight-cast cache
    is off while recording (cached casts are freed when the caller's autocast exits, the graph
    would keep reading them), so a replay casts the weights itself."""

    def __init__(self, cache=None):
        self.cache = cache if hasattr(cache, "graph_tensors") else None
        self.graphs = {}     # key -> (static inputs, replay, static output)
        self.replays = 0
        self.failed = None   # the error of a failed recording; everything runs eager after one
        self.cache_ptrs = None  # addresses of the cache tensors the recorded graphs read and write

    def _cache_tensor_ptrs(self):
        return None if self.cache is None else [t.data_ptr() for t in self.cache.graph_tensors()]

    def run(self, key, fn, *inputs):
        if self.failed is not None:
            return fn(*inputs)
        # a step run eager with grad on gives the cache new tail tensors (new taps after a cutoff
        # change, grown KV buffers): graphs hold the old addresses, now freed memory, so record
        # again. Tails such a step left are views autograd may have saved: give the cache its own
        # buffers first (the model would otherwise do it inside the recording, moving them mid-record).
        if self.cache is not None:
            self.cache.own_buffers()
        ptrs = self._cache_tensor_ptrs()
        if ptrs != self.cache_ptrs:
            self.graphs.clear()
        device = inputs[0].device
        key = (key, tuple(t.shape for t in inputs), _autocast_state(device.type))
        entry = self.graphs.get(key)
        if entry is None:
            static = tuple(t.clone() for t in inputs)
            try:
                entry = (static, *self._record_restoring_cache(lambda: fn(*static), device))
            except Exception as e:  # an op that cannot be captured: stay correct, only slower
                self.failed = e
                warnings.warn(f"generate: recording a CUDA graph of the {key[0]} step failed "
                              f"({type(e).__name__}: {e}); generating without CUDA graphs")
                return fn(*inputs)
            self.graphs[key] = entry
            self.cache_ptrs = self._cache_tensor_ptrs()
        static, replay, out = entry
        for dst, src in zip(static, inputs):
            dst.copy_(src)
        replay()
        self.replays += 1
        return out

    def _record_restoring_cache(self, body, device):
        cache = self.cache
        if cache is None:
            return self.record(body, device)
        state_ptrs = lambda: [t.data_ptr() for t in cache.state_tensors()]  # noqa: E731
        saved, ptrs = cache.snapshot(), state_ptrs()
        try:
            return self.record(body, device)
        finally:
            cache.restore(saved)
            if state_ptrs() != ptrs:
                raise RuntimeError("StepGraphs: the cache's buffers moved while recording a step; a graph "
                                   "needs them updated in place (features() with grad off)")

    def record(self, body, device):
        """(replay function, output) of body recorded into a CUDA graph (tests replace this on CPU)."""
        enabled, dtype = _autocast_state(device.type)
        amp = lambda: torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False)  # noqa: E731
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), amp():
                for _ in range(GRAPH_WARMUP_CALLS):
                    body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), amp():
                out = body()

        def replay():
            with torch.cuda.device(device):
                graph.replay()

        return replay, out


def _run_eager(key, fn, *inputs):
    """StepGraphs.run's signature, without a graph."""
    return fn(*inputs)


class ByteStream:
    """Step-by-step generation state: `step()` runs the model once and emits 1 byte (or a ChunkLM's
    `chunk` bytes) into `out`. The first overlap_save step also consumes the prompt (prefill).
    Call under torch.no_grad() with the model in eval mode (generate() does both)."""

    def __init__(self, model, prompt, max_new_bytes, *, mode="overlap_save", temperature=1.0, top_k=None,
                 seed=None, keep_logits=False, cuda_graphs=None):
        _check_args(prompt, max_new_bytes, mode, temperature, top_k, seed)
        if cuda_graphs not in (None, True, False):
            raise ValueError(f"generate: cuda_graphs must be None, True or False, got {cuda_graphs!r}")
        if mode == "overlap_save" and not hasattr(model, "init_cache"):
            raise ValueError(f"generate: mode='overlap_save' needs a model with init_cache; "
                             f"{type(model).__name__} has none (use mode='recompute')")
        self.model = model
        self._low_precision = None  # (dtype, low_precision_copy(model, dtype)), made at the first autocast step
        self.temperature, self.top_k = temperature, top_k
        self.max_new_bytes = max_new_bytes
        self.keep_logits = keep_logits
        device = next(model.parameters()).device
        context = bytes(prompt) if len(prompt) else bytes([BOS_BYTE])
        self.n_ctx = len(context)
        # whole sequence (context + new bytes) lives on the device; recompute reads a growing prefix
        self.seq = torch.zeros(1, self.n_ctx + max_new_bytes, dtype=torch.long, device=device)
        self.seq[0, :self.n_ctx] = torch.tensor(list(context), dtype=torch.long, device=device)
        self.chunked = is_chunk_model(model)
        # room for every byte plus a recording's warm-up steps (which write past the last position),
        # so a KV cache never grows, and so never moves, under a recorded graph
        self.cache = (model.init_cache(1, device, max_len=self.n_ctx + max_new_bytes + GRAPH_WARMUP_CALLS + 1)
                      if mode == "overlap_save" else None)
        self.fed = 0  # bytes of seq the cache has consumed (overlap_save)
        self.n_out = 0  # new bytes written into seq so far (on the device; `out` copies them to the host)
        self._out = bytearray()
        self.chunk = model.chunk if self.chunked else 1  # new bytes per step
        # one uniform per new byte (a whole last chunk's worth), drawn up front: both modes use the
        # same ones (greedy reads none: zeros keep every step's inputs the same)
        n_uniforms = -(-max_new_bytes // self.chunk) * self.chunk
        self.uniforms = (torch.zeros(n_uniforms, dtype=torch.float64) if temperature == 0 else
                         draw_uniforms(n_uniforms, seed)).to(device)
        self.logits = []  # [1, 256] float32 CPU tensors, one per new byte, when keep_logits
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"generate: cuda_graphs=True needs a model on a CUDA device, got {device}")
        if cuda_graphs is None:
            cuda_graphs = CUDA_GRAPHS and device.type == "cuda"
        # graphs only where a step has a fixed shape: the streaming backbone step, the chunk decoder
        # a chunk model's decoder: the whole chunk in one fused op where the model has one (ChunkLM)
        self.fused_decode = (FUSED_CHUNK_DECODE and self.chunked and hasattr(model, "decode_chunk")
                             and model.can_decode_chunk(self.chunk, device))
        graphable = self.chunked or hasattr(self.cache, "graph_tensors")
        self.graphs = StepGraphs(self.cache) if cuda_graphs and graphable else None

    @property
    def graph_replays(self):
        """Steps (backbone or decoder) run as CUDA graph replays so far."""
        return 0 if self.graphs is None else self.graphs.replays

    def _runner(self):
        """The model a step runs: under low-precision autocast with grad off, its low_precision_copy."""
        device_type = self.seq.device.type
        if not (LOW_PRECISION_WEIGHTS and torch.is_autocast_enabled(device_type)) or torch.is_grad_enabled() \
                or self.model.training:
            return self.model
        dtype = torch.get_autocast_dtype(device_type)
        if dtype not in (torch.bfloat16, torch.float16):
            return self.model
        if self._low_precision is None or self._low_precision[0] != dtype:
            self._low_precision = (dtype, low_precision_copy(self.model, dtype))
        return self._low_precision[1]

    def _use_graphs(self):
        return self.graphs is not None and not torch.is_grad_enabled() and not self.model.training

    @property
    def done(self):
        return self.n_out >= self.max_new_bytes

    @property
    def out(self) -> bytearray:
        """The new bytes so far (copied from the device when read: a host sync)."""
        if len(self._out) < self.n_out:
            start = self.n_ctx + len(self._out)
            self._out += bytes(self.seq[0, start:self.n_ctx + self.n_out].tolist())
        return self._out

    def _emit(self, logits, picked, n):
        """Write the first n picked bytes (on the device) after the context; logits [>= n, 256]."""
        pos = self.n_ctx + self.n_out
        self.seq[0, pos:pos + n] = picked[:n]
        self.n_out += n
        if self.keep_logits:  # a copy: a graph's outputs are overwritten by its next replay
            kept = logits[:n].detach().to("cpu", torch.float32, copy=True)
            self.logits.extend(kept[j:j + 1] for j in range(n))

    def _pick(self, logits, uniforms):
        return sample_bytes(logits, uniforms, self.temperature, self.top_k)

    def _features_last(self, x):
        """A chunk model's features [1, D] at the last of the new bytes x [1, T]."""
        # contiguous, as a graph's static copy is: the decoder's matmuls then see the same layout
        # (and pick the same kernels) eager or replayed, so both give the same bits
        return self._runner().features(x, cache=self.cache)[:, -1].contiguous()

    def _logits_last(self, x, uniforms):
        """The logits [1, 256] at the last of the new bytes x [1, T] and the byte picked from them [1]."""
        logits, _ = self._runner()(x, cache=self.cache)
        logits = logits[:, -1]
        return logits, self._pick(logits, uniforms)

    def _decode_chunk(self, h, first, uniforms):
        """A ChunkLM's whole chunk from features h [1, D]: slot j reads the byte before the chunk (first,
        [1, 1]) and the bytes picked at slots < j. Returns (logits [chunk, 256], bytes [chunk])."""
        runner, K = self._runner(), self.model.chunk
        # the op is inference only: training mode (dropout) or grad mode keeps the decoder module
        if self.fused_decode and not runner.training and not torch.is_grad_enabled():
            logits, picked = runner.decode_chunk(h, first[:, 0], uniforms[None], self.temperature, self.top_k)
            return logits[0], picked[0]
        inputs = torch.cat([first, first.new_zeros(1, K)], dim=1)  # slot j+1 receives byte j
        logits = []
        for j in range(K):
            step = runner.decode_logits(h, inputs[:, :j + 1])[:, -1]
            inputs[:, j + 1] = self._pick(step, uniforms[j:j + 1])
            logits.append(step)
        return torch.cat(logits), inputs[0, 1:]

    def step(self):
        if self.done:
            return
        end = self.n_ctx + self.n_out
        x = self.seq[:, :end] if self.cache is None else self.seq[:, self.fed:end]
        self.fed = end
        n = min(self.chunk, self.max_new_bytes - self.n_out)
        uniforms = self.uniforms[self.n_out:self.n_out + self.chunk]
        graphs = self.graphs if self._use_graphs() else None
        run = graphs.run if graphs is not None else _run_eager
        # the prefill (first call, any length) and full recompute of the backbone run eager
        backbone_run = run if self.cache is not None and self.cache.pos > 0 else _run_eager
        pos_after = None if self.cache is None else self.cache.pos + x.shape[1]
        # the kernel taps are cached per frequency cutoff: a new cutoff is a new graph
        key = ("backbone", getattr(self.model, "freq_cutoff", None))
        if self.chunked:
            h = backbone_run(key, self._features_last, x)
            logits, picked = run("decoder", self._decode_chunk, h, self.seq[:, end - 1:end], uniforms)
        else:
            logits, picked = backbone_run(key, self._logits_last, x, uniforms)
        if pos_after is not None:
            self.cache.pos = pos_after  # a replay runs no Python: count the bytes here
        self._emit(logits, picked, n)


@torch.no_grad()
def generate_with_logits(model, prompt, max_new_bytes, *, mode="overlap_save", temperature=1.0,
                         top_k=None, seed=None, keep_logits=True, cuda_graphs=None):
    """Like `generate` but also returns the logits each new byte was drawn from: (bytes, [[1,256], ...])."""
    stream = ByteStream(model, prompt, max_new_bytes, mode=mode, temperature=temperature, top_k=top_k,
                        seed=seed, keep_logits=keep_logits, cuda_graphs=cuda_graphs)
    modes = [(m, m.training) for m in model.modules()]  # each submodule's own (a frozen part stays eval)
    model.eval()
    try:
        while not stream.done:
            stream.step()
    finally:
        for m, training in modes:
            m.training = training
    return bytes(stream.out), stream.logits


def generate(model, prompt: bytes, max_new_bytes: int, *, mode="overlap_save", temperature=1.0,
             top_k=None, seed=None, cuda_graphs=None) -> bytes:
    """Generate `max_new_bytes` bytes after `prompt`; returns only the new bytes. See the module doc
    (cuda_graphs: None = CUDA graphs on a CUDA model, False = eager)."""
    out, _ = generate_with_logits(model, prompt, max_new_bytes, mode=mode, temperature=temperature,
                                  top_k=top_k, seed=seed, keep_logits=False, cuda_graphs=cuda_graphs)
    return out
