"""fft_lm.data: disjoint deterministic split, deterministic stream, files/dirs/.gz, clear errors."""
import gzip
import os

import numpy as np
import pytest
import torch

import fft_lm.data as data_mod
from fft_lm.data import ByteCorpus


def write_corpus(path, n_train=9000, n_val=1000):
    """Training bytes are lowercase letters, the tail is all '#': any leak is visible."""
    rng = np.random.default_rng(0)
    body = bytes(rng.integers(ord("a"), ord("z") + 1, n_train, dtype=np.uint8))
    path.write_bytes(body + b"#" * n_val)
    return path


def test_split_is_the_tail_and_disjoint(tmp_path):
    corpus = ByteCorpus(str(write_corpus(tmp_path / "c.txt")), val_frac=0.1, cache_dir=str(tmp_path / "cache"))
    assert corpus.n_train == 9000 and corpus.n_val == 1000 and len(corpus) == 10000
    assert bytes(corpus.val) == b"#" * 1000
    assert ord("#") not in np.asarray(corpus.train)
    for step in range(50):  # training windows (inputs and targets) never touch the validation tail
        x, y = corpus.train_batch(16, 64, seed=3, step=step)
        assert x.shape == y.shape == (16, 64) and x.dtype == torch.int64
        assert not (x == ord("#")).any() and not (y == ord("#")).any()
        assert torch.equal(x[:, 1:], y[:, :-1])
    for x, y in corpus.fixed_batches("val", 4, 64, 3):
        assert (x == ord("#")).all() and (y == ord("#")).all()


def test_train_stream_is_deterministic_per_seed_step_rank(tmp_path):
    corpus = ByteCorpus(str(write_corpus(tmp_path / "c.txt")), cache_dir=str(tmp_path / "cache"))
    batch = lambda **kw: corpus.train_batch(8, 32, **{"seed": 1, "step": 5, "rank": 0, "micro_step": 0, **kw})[0]
    assert torch.equal(batch(), batch())
    assert torch.equal(batch(), ByteCorpus(str(tmp_path / "c.txt"), cache_dir=str(tmp_path / "cache"))
                       .train_batch(8, 32, seed=1, step=5)[0])
    for change in ({"seed": 2}, {"step": 6}, {"rank": 1}, {"micro_step": 1}):
        assert not torch.equal(batch(), batch(**change)), change
    # the global RNG plays no part (resume does not depend on it)
    torch.manual_seed(123)
    a = batch()
    torch.rand(1000)
    assert torch.equal(a, batch())
    vals = [torch.cat([x for x, _ in corpus.fixed_batches("val", 4, 32, 3)]) for _ in range(2)]
    assert torch.equal(vals[0], vals[1])


def test_directory_with_gz_files_is_concatenated_in_order(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_bytes(b"second file")
    (root / "a.txt").write_bytes(b"first file")
    with gzip.open(root / "sub" / "c.txt.gz", "wb") as f:
        f.write(b"third, compressed")
    corpus = ByteCorpus(str(root), val_frac=0.2, cache_dir=str(tmp_path / "cache"))
    assert bytes(corpus.data) == b"first file\nsecond file\nthird, compressed\n"
    assert corpus.flat_path.startswith(str(tmp_path / "cache"))
    # hidden files and directories are not data, nor is the cache when it lives inside the corpus
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main")
    (root / ".notes").write_bytes(b"hidden")
    inside = ByteCorpus(str(root), val_frac=0.2, cache_dir=str(root / "cache"))
    again = ByteCorpus(str(root), val_frac=0.2, cache_dir=str(root / "cache"))  # its cache file now exists
    assert bytes(inside.data) == bytes(again.data) == bytes(corpus.data)
    assert inside.flat_path == again.flat_path


def test_directory_with_symlinked_folders_and_non_utf8_names(tmp_path):
    """Symlinked folders are data like real ones (each real folder read once, a link loop ends); a
    file name that is not UTF-8 is data too (its name only enters the cache file's hash)."""
    real = tmp_path / "real"
    (real / "books").mkdir(parents=True)
    (real / "books" / "a.txt").write_bytes(b"linked text")
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "books").symlink_to(real / "books", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # must not be walked forever
    (root / "z.txt").write_bytes(b"own text")
    corpus = ByteCorpus(str(root), val_frac=0.2, cache_dir=str(tmp_path / "cache"))
    assert bytes(corpus.data) == b"linked text\nown text\n"
    odd = tmp_path / "odd"
    odd.mkdir()
    with open(os.path.join(os.fsencode(odd), b"a\xff.txt"), "wb") as f:  # not valid UTF-8
        f.write(b"latin-1 name")
    (odd / "b.txt").write_bytes(b"plain name")
    corpus = ByteCorpus(str(odd), val_frac=0.2, cache_dir=str(tmp_path / "cache"))
    assert bytes(corpus.data) == b"latin-1 name\nplain name\n"


def test_single_gz_file_is_decompressed_once_into_the_cache(tmp_path):
    text = b"hello gzip world\n" * 100
    with gzip.open(tmp_path / "t.txt.gz", "wb") as f:
        f.write(text)
    cache = tmp_path / "cache"
    first = ByteCorpus(str(tmp_path / "t.txt.gz"), cache_dir=str(cache))
    assert bytes(first.data) == text
    assert len(list(cache.iterdir())) == 1
    second = ByteCorpus(str(tmp_path / "t.txt.gz"), cache_dir=str(cache))
    assert second.flat_path == first.flat_path


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="--data .*no such file"):
        ByteCorpus(str(tmp_path / "missing.txt"))
    monkeypatch.setattr(data_mod, "DEFAULT_CORPUS", str(tmp_path / "jargon.txt.gz"))
    with pytest.raises(FileNotFoundError, match="apt-get install jargon-text.*--data"):
        ByteCorpus(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty directory"):
        ByteCorpus(str(tmp_path / "empty"))
    small = ByteCorpus(str(write_corpus(tmp_path / "c.txt", 900, 100)), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="--seq-len 200: the validation split"):
        next(small.fixed_batches("val", 2, 200, 1))
    with pytest.raises(ValueError, match="val_frac"):
        ByteCorpus(str(tmp_path / "c.txt"), val_frac=1.5)
