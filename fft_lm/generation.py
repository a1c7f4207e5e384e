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
"""

import torch

BOS_BYTE = 0x0A  # context used for an empty prompt
MODES = ("overlap_save", "recompute")


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


def is_chunk_model(model):
    return hasattr(model, "decode_logits") and getattr(model, "chunk", 1) > 1


class ByteStream:
    """Step-by-step generation state: `step()` runs the model once and emits 1 byte (or a ChunkLM's
    `chunk` bytes) into `out`. The first overlap_save step also consumes the prompt (prefill).
    Call under torch.no_grad() with the model in eval mode (generate() does both)."""

    def __init__(self, model, prompt, max_new_bytes, *, mode="overlap_save", temperature=1.0, top_k=None,
                 seed=None, keep_logits=False):
        _check_args(prompt, max_new_bytes, mode, temperature, top_k, seed)
        if mode == "overlap_save" and not hasattr(model, "init_cache"):
            raise ValueError(f"generate: mode='overlap_save' needs a model with init_cache; "
                             f"{type(model).__name__} has none (use mode='recompute')")
        self.model = model
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

    @property
    def done(self):
        return len(self.out) >= self.max_new_bytes

    def _emit(self, logits, pos):
        b = self.pick(logits)
        self.seq[0, pos] = b
        self.out.append(b)
        if self.keep_logits:
            self.logits.append(logits.float().cpu())

    def step(self):
        if self.done:
            return
        end = self.n_ctx + len(self.out)
        x = self.seq[:, :end] if self.cache is None else self.seq[:, self.fed:end]
        self.fed = end
        if self.chunked:
            h_last = self.model.features(x, cache=self.cache)[:, -1]  # [1, D]
            for _ in range(min(self.model.chunk, self.max_new_bytes - len(self.out))):
                pos = self.n_ctx + len(self.out)
                # decoder inputs: the byte before the chunk, then the chunk's bytes so far
                logits = self.model.decode_logits(h_last, self.seq[:, end - 1:pos])[:, -1]
                self._emit(logits, pos)
        else:
            logits, _ = self.model(x, cache=self.cache)
            self._emit(logits[:, -1], end)


@torch.no_grad()
def generate_with_logits(model, prompt, max_new_bytes, *, mode="overlap_save", temperature=1.0,
                         top_k=None, seed=None, keep_logits=True):
    """Like `generate` but also returns the logits each new byte was drawn from: (bytes, [[1,256], ...])."""
    stream = ByteStream(model, prompt, max_new_bytes, mode=mode, temperature=temperature, top_k=top_k,
                        seed=seed, keep_logits=keep_logits)
    was_training = model.training
    model.eval()
    try:
        while not stream.done:
            stream.step()
    finally:
        model.train(was_training)
    return bytes(stream.out), stream.logits


def generate(model, prompt: bytes, max_new_bytes: int, *, mode="overlap_save", temperature=1.0,
             top_k=None, seed=None) -> bytes:
    """Generate `max_new_bytes` bytes after `prompt`; returns only the new bytes. See the module doc."""
    out, _ = generate_with_logits(model, prompt, max_new_bytes, mode=mode, temperature=temperature,
                                  top_k=top_k, seed=seed, keep_logits=False)
    return out
