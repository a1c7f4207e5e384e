"""Byte corpora for the LMs: no tokenizer, the model reads raw bytes (vocabulary 256).

`ByteCorpus(path)` turns a file or a directory into one flat byte array, memory-mapped with numpy:
  - a plain file is mapped as it is;
  - a .gz (or dictzip .dz) file, or a directory (all files under it, recursively, sorted by relative path, .gz ones
    decompressed, each followed by a newline byte; symlinked folders followed, each real folder once) is first written once into a cache file
    (FFT_LM_CACHE or ~/.cache/fft_lm/<name>-<hash>.bin; the hash covers paths, sizes and mtimes,
    so an edited corpus gets a fresh cache) and that file is mapped.
The split is deterministic and disjoint: validation is the last `val_frac` of the bytes, training
everything before it. Training windows never reach into the tail.

Training batches are a pure function of (seed, step, rank, micro_step): resuming at step s replays
exactly the stream a run that never stopped would have seen, and DDP ranks draw different windows.
Validation uses fixed, evenly spaced windows over the tail.
"""
import functools
import gzip
import hashlib
import os
import zlib

import numpy as np
import torch

from fft_lm.atomic import atomic_write

DEFAULT_CORPUS = "/usr/share/doc/jargon-text/jargon.txt.gz"
GZIP_SUFFIXES = (".gz", ".dz")  # .dz: dictzip (dict-gcide), a valid gzip stream


def default_cache_dir():
    return os.environ.get("FFT_LM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fft_lm")


def _corpus_files(path, cache_dir):
    """The files that make up `path`, in a fixed order."""
    if os.path.isfile(path):
        return [path]
    files = []
    cache = os.path.realpath(cache_dir)
    seen = {os.path.realpath(path)}  # symlinked folders are followed, each real folder read once (no loops)
    for root, dirs, names in os.walk(path, followlinks=True):
        # hidden directories (.git) and this package's own cache (if it lives inside the data) are not data
        keep = []
        for d in sorted(dirs):
            full = os.path.join(root, d)
            real = os.path.realpath(full)
            if d.startswith(".") or real == cache or real in seen:
                continue
            seen.add(real)
            keep.append(d)
        dirs[:] = keep
        for name in sorted(names):
            if not name.startswith("."):
                files.append(os.path.join(root, name))
    files.sort(key=lambda f: os.path.relpath(f, path))
    if not files:
        raise ValueError(f"--data {path!r}: expected a file or a directory with files in it, got an empty directory")
    return files


def _cache_path(path, files, cache_dir):
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        # fsencode: file names need not be UTF-8 (bytes that do not decode come back as surrogates)
        h.update(os.fsencode(os.path.abspath(f)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    name = os.path.basename(os.path.normpath(path)).replace(".gz", "").replace(".dz", "") or "corpus"
    return os.path.join(cache_dir, f"{name}-{h.hexdigest()[:16]}.bin")


def _read_blocks(f):
    """f's bytes (decompressed when .gz) in blocks; a file that cannot be read (a corrupt or truncated
    .gz, no permission) is a ValueError naming it."""
    opener = gzip.open if f.endswith(GZIP_SUFFIXES) else open
    try:
        with opener(f, "rb") as src:
            while block := src.read(1 << 22):
                yield block
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"--data {f}: cannot read it: {e}") from e


def _write_flat(files, out_path):
    """Concatenate (decompressing .gz) into out_path, atomically."""
    with atomic_write(out_path) as out:
        for f in files:
            for block in _read_blocks(f):
                out.write(block)
            if len(files) > 1:
                out.write(b"\n")  # keep files from running into each other mid-line

def resolve_corpus(path=None, cache_dir=None):
    """Path of a flat byte file for `path` (None: the default Jargon File corpus)."""
    if not path:
        if not os.path.exists(DEFAULT_CORPUS):
            raise FileNotFoundError(
                f"default corpus {DEFAULT_CORPUS} not found: install it with "
                f"`sudo apt-get install jargon-text`, or pass --data PATH (a text file, a .gz file "
                f"or a directory of files)")
        path = DEFAULT_CORPUS
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path!r}: no such file or directory")
    cache_dir = cache_dir or default_cache_dir()
    files = _corpus_files(path, cache_dir)
    if len(files) == 1 and not files[0].endswith(GZIP_SUFFIXES):
        return files[0]
    out = _cache_path(path, files, cache_dir)
    if not os.path.exists(out):
        _write_flat(files, out)
    return out


class ByteCorpus:
    """A byte corpus split into a training head and a validation tail."""

    def __init__(self, path=None, *, val_frac=0.1, cache_dir=None):
        if not 0.0 < val_frac < 1.0:
            raise ValueError(f"val_frac: expected a fraction in (0, 1), got {val_frac}")
        self.source = path or DEFAULT_CORPUS
        self.flat_path = resolve_corpus(path, cache_dir)
        n = os.path.getsize(self.flat_path)
        if n < 2:
            raise ValueError(f"--data {self.source!r}: expected at least 2 bytes of text, got {n}")
        self.data = np.memmap(self.flat_path, dtype=np.uint8, mode="r")
        self.n_val = max(1, int(n * val_frac))
        self.n_train = n - self.n_val
        self.train = self.data[: self.n_train]
        self.val = self.data[self.n_train:]

    def __len__(self):
        return len(self.data)

    def _check_len(self, split, n, seq_len):
        if n < seq_len + 1:
            raise ValueError(
                f"--seq-len {seq_len}: the {split} split of {self.source!r} has only {n} bytes, "
                f"need at least seq_len + 1 = {seq_len + 1}; use a shorter --seq-len, a larger corpus"
                f"{' or a larger --val-frac' if split == 'validation' else ''}")

    def check_seq_len(self, seq_len):
        """ValueError naming --seq-len unless both splits hold at least one window of seq_len + 1 bytes."""
        self._check_len("training", self.n_train, seq_len)
        self._check_len("validation", self.n_val, seq_len)

    @staticmethod
    def _windows(split, offsets, seq_len, device):
        rows = np.stack([np.asarray(split[o: o + seq_len + 1]) for o in offsets])
        xy = torch.from_numpy(rows.astype(np.int64))
        x, y = xy[:, :-1], xy[:, 1:]
        if device is not None and torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous().to(device or "cpu"), y.contiguous().to(device or "cpu")

    def train_batch(self, batch_size, seq_len, *, seed, step, rank=0, micro_step=0, device=None):
        """(x, y) int64 [batch_size, seq_len], y = x shifted by one; random windows of the training split.

        Deterministic in (seed, step, rank, micro_step) and nothing else.
        """
        self._check_len("training", self.n_train, seq_len)
        key = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(rank), int(micro_step)])
        gen = torch.Generator().manual_seed(int(key.generate_state(1, np.uint64)[0] >> 1))
        offsets = torch.randint(0, self.n_train - seq_len, (batch_size,), generator=gen).tolist()
        return self._windows(self.train, offsets, seq_len, device)

    def fixed_batches(self, split, batch_size, seq_len, n_batches, *, device=None):
        """n_batches fixed batches of windows spread evenly over `split` ("val" or "train")."""
        data = self.val if split == "val" else self.train
        self._check_len("validation" if split == "val" else "training", len(data), seq_len)
        count = batch_size * n_batches
        offsets = np.linspace(0, len(data) - seq_len - 1, count).astype(np.int64).tolist()
        for b in range(n_batches):
            yield self._windows(data, offsets[b * batch_size: (b + 1) * batch_size], seq_len, device)

    @functools.cached_property
    def fingerprint(self):
        """sha256 (hex, 16 digits) of 64 evenly spaced runs of 4096 bytes: tells another corpus of the same
        size from this one without reading all of it (a resumed run checks it continues the same bytes).
        Computed once: the corpus is read-only, and every checkpoint records it."""
        blocks, block_bytes = 64, 4096
        h = hashlib.sha256(str(len(self.data)).encode())
        for start in np.linspace(0, max(0, len(self.data) - block_bytes), blocks).astype(np.int64):
            h.update(np.asarray(self.data[start: start + block_bytes]).tobytes())
        return h.hexdigest()[:16]

    def state(self):
        return {"source": str(self.source), "flat_path": str(self.flat_path), "fingerprint": self.fingerprint,
                "n_bytes": int(len(self.data)), "n_train": int(self.n_train), "n_val": int(self.n_val)}
