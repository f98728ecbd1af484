"""Compile (once) and load the simulated-npu C++ extension against the installed torch.

The sources ship inside the package (``ascend_moe/device/csrc``).  They are compiled on first use
with ``torch.utils.cpp_extension.load`` into a cache directory keyed by the torch and Python
versions (``$ASCEND_MOE_CACHE`` or ``~/.cache/ascend_moe``), so installing ascend-moe never needs
torch at build time, and a later torch upgrade rebuilds by itself.  A file lock keeps concurrent
processes (pytest workers, CI jobs) to one build; the others wait and load the result.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

EXTENSION_NAME = "ascend_moe_npu_sim"
SOURCES = (Path(__file__).parent / "csrc" / "npu_sim.cpp",)

_module: Optional[ModuleType] = None
last_build_seconds: Optional[float] = None


def cache_dir() -> Path:
    """Where the compiled extension lives: one folder per torch / Python version."""
    import torch
    root = os.environ.get("ASCEND_MOE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ascend_moe")
    tag = f"torch-{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    return Path(root) / tag / "npu_sim"


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the one pip installed with ascend-moe lives in the
    environment's bin folder, which is not on PATH when the venv is not activated."""
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja
        if getattr(ninja, "BIN_DIR", None):
            dirs.insert(0, ninja.BIN_DIR)
    except ImportError:
        pass
    path = os.environ.get("PATH", "").split(os.pathsep)
    for d in reversed(dirs):
        if os.path.isfile(os.path.join(d, "ninja")) and d not in path:
            path.insert(0, d)
    os.environ["PATH"] = os.pathsep.join(path)


def load_extension(verbose: bool = False) -> ModuleType:
    """The loaded extension module (compiling it first if the cache has no current build)."""
    global _module, last_build_seconds
    if _module is not None:
        return _module
    from filelock import FileLock
    from torch.utils import cpp_extension

    build_dir = cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    _put_ninja_on_path()
    started = time.perf_counter()
    with FileLock(str(build_dir / "build.lock")):
        try:
            _module = cpp_extension.load(
                name=EXTENSION_NAME, sources=[str(s) for s in SOURCES], build_directory=str(build_dir),
                extra_cflags=["-O2"], verbose=verbose, with_cuda=False)
        except Exception as e:
            raise RuntimeError(
                f"ascend-moe: building the simulated npu device failed ({type(e).__name__}: {e}). It needs a "
                f"C++17 compiler and ninja (pip install ninja); the build folder is {build_dir}") from e
    last_build_seconds = time.perf_counter() - started
    return _module
