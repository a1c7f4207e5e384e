"""Whether fft_tensor/_C.abi3.so, built on another machine and carried here, can stand in for a build.

    python benchmarks/prebuilt_ok.py     # exit 0 and say why it is usable, or exit 1 and say why not

device_run.sh asks this before it builds. A GPU session has about 30 minutes of device time and the sm_90
build takes about 4 of them on the device machine; the module is abi3 (one file for every Python >= 3.9)
and depends only on the torch build it was compiled against, so a build made on the CPU machine with the
same torch, for the device's architecture, from the same sources, loads and runs there. Build it with

    TORCH_CUDA_ARCH_LIST=9.0 FFT_TENSOR_CUDA=1 python setup.py build_ext --inplace

and pass `carry=["fft_tensor/_C.abi3.so", "fft_tensor/_build_info.py"]` to the device tool, or, to carry it
beside NVIDIA's wheels (`.whl/`, 47 MB; the carry holds 64 MiB), gzip it into the git-ignored `.carry/`:

    mkdir -p .carry && gzip -9 -c fft_tensor/_C.abi3.so > .carry/_C.abi3.so.gz && cp fft_tensor/_build_info.py .carry/

and pass `carry=[".carry", ".whl"]`: device_run.sh unpacks it before asking this script. The module is
used only when its _build_info.py (written by setup.py after a successful build) names this torch, this
GPU's architecture, the sources in csrc/, this setup.py and the module file itself (by hash), when it is
not an instrumented build, and when it loads (in a child process); any other case builds as before.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_from(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arch_covers(arch_list, major, minor):
    # TORCH_CUDA_ARCH_LIST entries: "9.0", "9.0+PTX", "9.0a", separated by ';' or spaces
    wanted = f"{major}.{minor}"
    entries = arch_list.replace(" ", ";").split(";")
    return any(e.split("+")[0].rstrip("a") == wanted for e in entries if e)


def problems(root=ROOT, device_capability=None):
    """The reasons the carried module cannot be used (empty: it can)."""
    import torch
    so = os.path.join(root, "fft_tensor", "_C.abi3.so")
    info_path = os.path.join(root, "fft_tensor", "_build_info.py")
    if not os.path.isfile(so) or not os.path.isfile(info_path):
        return ["no fft_tensor/_C.abi3.so with its _build_info.py"]
    info = _module_from(info_path, "_fft_tensor_carried_build_info")
    loader = _module_from(os.path.join(root, "fft_tensor", "_loader.py"), "_fft_tensor_carried_loader")
    found = []
    if getattr(info, "TORCH_VERSION", None) != torch.__version__:
        found.append(f"built against torch {getattr(info, 'TORCH_VERSION', None)}, this is {torch.__version__}")
    if not getattr(info, "WITH_CUDA", False):
        found.append("built without CUDA")
    if device_capability is None and torch.cuda.is_available():
        device_capability = torch.cuda.get_device_capability()
    arch_list = getattr(info, "CUDA_ARCH_LIST", None)
    if arch_list is None:
        found.append("its _build_info.py does not say which GPU architectures it was built for")
    elif device_capability is None:
        found.append("no CUDA device here to check the architectures against")
    elif not _arch_covers(arch_list, *device_capability):
        found.append(f"built for TORCH_CUDA_ARCH_LIST={arch_list!r}, this GPU is sm_{device_capability[0]}{device_capability[1]}")
    if getattr(info, "DECODE_STAMPS", False) or getattr(info, "DEBUG", False):
        found.append("an instrumented build (DECODE_STAMPS or DEBUG)")
    if getattr(info, "SOURCES_SHA1", None) != loader._sources_sha1():
        found.append("built from other sources than csrc/ here")
    if getattr(info, "SETUP_SHA1", None) != loader._file_sha1(os.path.join(root, "setup.py")):
        found.append("built by another setup.py (compile flags) than the one here")
    if getattr(info, "MODULE_SHA1", None) != loader._file_sha1(so):
        found.append("_build_info.py describes another module file than fft_tensor/_C.abi3.so")
    return found


def loads(root=ROOT):
    """Whether the module loads here with every op registered (a separate process: a module that fails to
    load must leave this one able to build)."""
    import subprocess
    code = "import torch, fft_tensor; torch.ops.fft_tensor.causal_conv"
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    return result.returncode == 0, (result.stderr.strip().splitlines() or [""])[-1]


def main():
    found = problems()
    if not found:
        ok, why = loads()
        if not ok:
            found.append(f"it does not load here ({why})")
    if found:
        print("prebuilt module not used: " + "; ".join(found))
        return 1
    print("prebuilt module used: same torch, sources and GPU architecture; no build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
