"""import fft_tensor refuses a missing or stale compiled module and says how to rebuild it."""
import importlib
import sys
import types

import pytest
import torch

from fft_tensor import _loader

REBUILD_HINT = "pip install --no-build-isolation -e ."


def fake_build_info(monkeypatch, **fields):
    info = types.ModuleType("fft_tensor._build_info")
    real = importlib.import_module("fft_tensor._build_info")
    for name in ("TORCH_VERSION", "WITH_CUDA", "SOURCES_SHA1"):
        setattr(info, name, fields.get(name, getattr(real, name)))
    monkeypatch.setitem(sys.modules, "fft_tensor._build_info", info)
    monkeypatch.setattr(sys.modules["fft_tensor"], "_build_info", info, raising=False)


def test_current_build_loads(monkeypatch):
    monkeypatch.delenv("FFT_TENSOR_SKIP_STALE_CHECK", raising=False)
    fake_build_info(monkeypatch, SOURCES_SHA1=_loader._sources_sha1())
    assert _loader.load().TORCH_VERSION == torch.__version__


def test_other_torch_version_is_stale(monkeypatch):
    fake_build_info(monkeypatch, TORCH_VERSION="1.0.0")
    with pytest.raises(ImportError, match=r"built against torch 1\.0\.0.*stale") as e:
        _loader.load()
    assert REBUILD_HINT in str(e.value)


def test_changed_sources_are_stale(monkeypatch):
    monkeypatch.delenv("FFT_TENSOR_SKIP_STALE_CHECK", raising=False)
    fake_build_info(monkeypatch, SOURCES_SHA1="0" * 40)
    with pytest.raises(ImportError, match="sources under csrc/ changed") as e:
        _loader.load()
    assert REBUILD_HINT in str(e.value)
    monkeypatch.setenv("FFT_TENSOR_SKIP_STALE_CHECK", "1")  # the documented escape hatch
    _loader.load()


def test_missing_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "fft_tensor._build_info", None)  # import of it fails
    monkeypatch.delattr(sys.modules["fft_tensor"], "_build_info", raising=False)
    with pytest.raises(ImportError, match="has not been built") as e:
        _loader.load()
    assert REBUILD_HINT in str(e.value)


def test_sources_hash_follows_every_byte_and_name(tmp_path, monkeypatch):
    # the stale check is only as good as the hash: one changed byte, a renamed file or a new file under
    # csrc/ must change it (a copy of csrc/, so the real sources stay as they are)
    import shutil
    shutil.copytree(_loader._ROOT + "/csrc", tmp_path / "csrc")
    monkeypatch.setattr(_loader, "_ROOT", str(tmp_path))
    base = _loader._sources_sha1()
    assert base == _loader._sources_sha1()
    ops_cpp = tmp_path / "csrc" / "ops.cpp"
    text = ops_cpp.read_bytes()
    ops_cpp.write_bytes(text[:-1] + bytes([text[-1] ^ 1]))
    changed = _loader._sources_sha1()
    ops_cpp.write_bytes(text)
    assert changed != base and _loader._sources_sha1() == base
    ops_cpp.rename(tmp_path / "csrc" / "ops2.cpp")
    assert _loader._sources_sha1() != base
    ops_cpp.write_bytes(text)
    fake_build_info(monkeypatch, SOURCES_SHA1=base)  # the build as of before the new file
    monkeypatch.delenv("FFT_TENSOR_SKIP_STALE_CHECK", raising=False)
    with pytest.raises(ImportError, match="sources under csrc/ changed"):
        _loader.load()
