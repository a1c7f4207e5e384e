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
and a `chunk` attribute) run the backbone once per chunk and then their small chunk decoder
`chunk` times, one byte at a time; every other model emits one byte per step.

Conventions
  - The result holds only the new bytes (not the prompt).
  - Empty prompt: the model is conditioned on a single newline byte b"\\n" (BOS_BYTE), the usual
    boundary in byte-level text corpora. That byte is not part of the result.
  - Prompts longer than the model's training seq_len are fine: the conv model has no position
    limit and GPT uses RoPE; both modes see the full context.
  - temperature=0 is greedy (argmax). Otherwise logits / temperature, optional top-k filter, and a
    draw from a CPU torch.Generator seeded with `seed` (in float64), so a seed gives the same
    bytes in both modes and on any device.

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
  fixed-shape step once into a torch.cuda.CUDAGraph and replays it: the SpectralLM / ChunkLM
  backbone step through the overlap-save cache (its tails are updated in place, see
  fft_lm.model.SpectralCache) and the ChunkLM decoder for each slot count J = 1..chunk (also in
  recompute mode: the decoder is the same there). The prefill, full recompute of the backbone and
  the GPT's KV cache (its shapes grow every step) stay eager. Replays run the same kernels on the
  same values as eager stepping, so the output is the same bytes.
"""
import copy
import warnings

import torch
import torch.nn as nn

from fft_lm.model import SpectralCache

BOS_BYTE = 0x0A  # context used for an empty prompt
MODES = ("overlap_save", "recompute")
CUDA_GRAPHS = True  # what cuda_graphs=None means on CUDA: the one switch for the graph path
LOW_PRECISION_WEIGHTS = True  # autocast on CUDA: run a copy with nn.Linear weights in the autocast dtype
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
            or not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"generate: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 256):
        raise ValueError(f"generate: top_k must be None or an int in 1..256, got {top_k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"generate: seed must be None or an int, got {seed!r}")


def make_picker(temperature=1.0, top_k=None, seed=None):
    """Return pick(logits[1, 256]) -> int byte, greedy when temperature == 0."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def pick(logits):
        if temperature == 0:
            return int(torch.argmax(logits[0]).item())
        scores = logits[0].detach().to("cpu", torch.float64) / temperature
        if top_k is not None and top_k < scores.numel():
            kth = torch.topk(scores, top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen).item())

    return pick


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
    SpectralCache tails in place (they never move); the warm-up calls really run, so the tails and
    pos are saved before recording and restored after. fn's result is the graph's static output:
    overwritten by the next replay of the same key, so use it before then.
    Autocast is recorded as it is when a key is first seen (part of the key); its weight-cast cache
    is off while recording (cached casts are freed when the caller's autocast exits, the graph
    would keep reading them), so a replay casts the weights itself."""

    def __init__(self, cache=None):
        self.cache = cache if isinstance(cache, SpectralCache) else None
        self.graphs = {}     # key -> (static inputs, replay, static output)
        self.replays = 0
        self.failed = None   # the error of a failed recording; everything runs eager after one
        self.cache_ptrs = None  # addresses of the cache tensors the recorded graphs read and write

    def _cache_tensor_ptrs(self):
        if self.cache is None:
            return None
        taps = [t for pair in (self.cache.taps or []) for t in pair if t is not None]
        return [t.data_ptr() for t in list(self.cache.tails) + taps]

    def run(self, key, fn, *inputs):
        if self.failed is not None:
            return fn(*inputs)
        # a step run eager with grad on gives the cache new tail tensors (new taps after a cutoff
        # change): graphs hold the old addresses, now freed memory, so record again. Tails such a
        # step left are views autograd may have saved: give the cache its own buffers first (the
        # model would otherwise do it inside the recording, moving them mid-record).
        if self.cache is not None:
            self.cache.own_tails()
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
        saved = None
        if cache is not None:
            saved = ([t.clone() for t in cache.tails], cache.pos, [t.data_ptr() for t in cache.tails])
        try:
            return self.record(body, device)
        finally:
            if cache is not None:
                tails, pos, ptrs = saved
                for t, s in zip(cache.tails, tails):
                    t.copy_(s)
                cache.pos = pos
                if [t.data_ptr() for t in cache.tails] != ptrs:
                    raise RuntimeError("StepGraphs: the cache's tails moved while recording a step; a graph "
                                       "needs them updated in place (SpectralLM.features with grad off)")

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
        self.pick = make_picker(temperature, top_k, seed)
        self.max_new_bytes = max_new_bytes
        self.keep_logits = keep_logits
        device = next(model.parameters()).device
        context = bytes(prompt) if len(prompt) else bytes([BOS_BYTE])
        self.n_ctx = len(context)
        # whole sequence (context + new bytes) lives on the device; recompute reads a growing prefix
        self.seq = torch.zeros(1, self.n_ctx + max_new_bytes, dtype=torch.long, device=device)
        self.seq[0, :self.n_ctx] = torch.tensor(list(context), dtype=torch.long, device=device)
        self.chunked = is_chunk_model(model)
        self.cache = (model.init_cache(1, device, max_len=self.n_ctx + max_new_bytes)
                      if mode == "overlap_save" else None)
        self.fed = 0  # bytes of seq the cache has consumed (overlap_save)
        self.out = bytearray()
        self.logits = []  # [1, 256] float32 CPU tensors, one per new byte, when keep_logits
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"generate: cuda_graphs=True needs a model on a CUDA device, got {device}")
        if cuda_graphs is None:
            cuda_graphs = CUDA_GRAPHS and device.type == "cuda"
        # graphs only where a step has a fixed shape: the streaming backbone step, the chunk decoder
        graphable = self.chunked or isinstance(self.cache, SpectralCache)
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
        return len(self.out) >= self.max_new_bytes

    def _emit(self, logits, pos):
        b = self.pick(logits)  # the one host sync of a byte
        self.seq[0, pos] = b
        self.out.append(b)
        if self.keep_logits:  # a copy: a graph's output is overwritten by its next replay
            self.logits.append(logits.detach().to("cpu", torch.float32, copy=True))

    def _backbone_last(self, x):
        """Last position's output for new bytes x [1, T]: features [1, D] (chunk models) or logits [1, 256]."""
        if self.chunked:
            # contiguous, as a graph's static copy is: the decoder's matmuls then see the same layout
            # (and pick the same kernels) eager or replayed, so both give the same bits
            return self._runner().features(x, cache=self.cache)[:, -1].contiguous()
        logits, _ = self._runner()(x, cache=self.cache)
        return logits[:, -1]

    def _decode_last(self, h, inputs):
        return self._runner().decode_logits(h, inputs)[:, -1]

    def step(self):
        if self.done:
            return
        end = self.n_ctx + len(self.out)
        x = self.seq[:, :end] if self.cache is None else self.seq[:, self.fed:end]
        self.fed = end
        graphs = self.graphs if self._use_graphs() else None
        # the prefill (first call, any length) and full recompute run eager
        if graphs is not None and self.cache is not None and self.cache.pos > 0:
            pos_after = self.cache.pos + x.shape[1]
            # the kernel taps are cached per frequency cutoff: a new cutoff is a new graph
            last = graphs.run(("backbone", getattr(self.model, "freq_cutoff", None)), self._backbone_last, x)
            self.cache.pos = pos_after  # a replay runs no Python: count the bytes here
        else:
            last = self._backbone_last(x)
        if self.chunked:
            for _ in range(min(self.model.chunk, self.max_new_bytes - len(self.out))):
                pos = self.n_ctx + len(self.out)
                # decoder inputs: the byte before the chunk, then the chunk's bytes so far
                inputs = self.seq[:, end - 1:pos]
                if graphs is not None:
                    logits = graphs.run("decoder", self._decode_last, last, inputs)
                else:
                    logits = self._decode_last(last, inputs)
                self._emit(logits, pos)
        else:
            self._emit(last, end)


@torch.no_grad()
def generate_with_logits(model, prompt, max_new_bytes, *, mode="overlap_save", temperature=1.0,
                         top_k=None, seed=None, keep_logits=True, cuda_graphs=None):
    """Like `generate` but also returns the logits each new byte was drawn from: (bytes, [[1,256], ...])."""
    stream = ByteStream(model, prompt, max_new_bytes, mode=mode, temperature=temperature, top_k=top_k,
                        seed=seed, keep_logits=keep_logits, cuda_graphs=cuda_graphs)
    was_training = model.training
    model.eval()
    try:
        while not stream.done:
            stream.step()
    finally:
        model.train(was_training)
    return bytes(stream.out), stream.logits


def generate(model, prompt: bytes, max_new_bytes: int, *, mode="overlap_save", temperature=1.0,
             top_k=None, seed=None, cuda_graphs=None) -> bytes:
    """Generate `max_new_bytes` bytes after `prompt`; returns only the new bytes. See the module doc
    (cuda_graphs: None = CUDA graphs on a CUDA model, False = eager)."""
    out, _ = generate_with_logits(model, prompt, max_new_bytes, mode=mode, temperature=temperature,
                                  top_k=top_k, seed=seed, keep_logits=False, cuda_graphs=cuda_graphs)
    return out
