"""Build and drive the fake CANN runtime (C sources next to this file) for the aclnn dispatcher tests.

``build_fake(root, omit=())`` compiles ``root/lib64/{libascendcl,libnnopbase,libopapi}.so`` with the
system C compiler (well under a second); ``omit`` leaves chosen symbols out of libopapi.so.
``Fake(root)`` talks to the loaded fake through ctypes: the JSON-lines call log, the object counters,
failure injection and the workspace size the fake asks for.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from typing import Dict, Iterable, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def compiler() -> Optional[str]:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def build_fake(root: str, omit: Iterable[str] = ()) -> str:
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc/clang) to build the fake CANN runtime")
    lib = os.path.join(root, "lib64")
    os.makedirs(lib, exist_ok=True)
    common = [cc, "-shared", "-fPIC", "-O1", "-fvisibility=hidden", "-I", HERE]
    link = ["-L", lib, "-lascendcl", "-Wl,-rpath,$ORIGIN"]
    subprocess.run(common + ["-Wl,-soname,libascendcl.so", "-o", os.path.join(lib, "libascendcl.so"),
                             os.path.join(HERE, "ascendcl.c")], check=True)
    subprocess.run(common + ["-o", os.path.join(lib, "libnnopbase.so"), os.path.join(HERE, "nnopbase.c")] + link,
                   check=True)
    subprocess.run(common + [f"-DOMIT_{s}" for s in omit] +
                   ["-o", os.path.join(lib, "libopapi.so"), os.path.join(HERE, "opapi.c")] + link, check=True)
    return root


class Fake:
    """ctypes handle on the fake libascendcl (the same instance the dispatcher dlopened)."""

    def __init__(self, root: str):
        self.lib = ctypes.CDLL(os.path.join(root, "lib64", "libascendcl.so"))
        self.lib.fake_log.restype = ctypes.c_char_p
        self.lib.fake_counts.restype = ctypes.c_char_p
        self.lib.fake_fail.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        self.lib.fake_set_workspace.argtypes = [ctypes.c_uint64]

    def reset(self) -> None:
        self.lib.fake_reset()

    def fail(self, symbol: str, status: int, message: str = "") -> None:
        self.lib.fake_fail(symbol.encode(), status, message.encode())

    def set_workspace(self, size: int) -> None:
        self.lib.fake_set_workspace(size)

    def events(self) -> List[dict]:
        return [json.loads(line) for line in self.lib.fake_log().decode().splitlines() if line]

    def counts(self) -> Dict[str, int]:
        return json.loads(self.lib.fake_counts().decode())

    # -- views on the log --
    def tensors(self) -> Dict[int, dict]:
        return {e["id"]: e for e in self.events() if e["ev"] == "aclCreateTensor"}

    def gws(self) -> List[dict]:
        return [e for e in self.events() if e["ev"] == "gws"]

    def runs(self) -> List[dict]:
        return [e for e in self.events() if e["ev"] == "run"]

    def assert_balanced(self) -> None:
        """Every created object destroyed exactly once, none destroyed wrongly."""
        c = self.counts()
        assert c["tensor_create"] == c["tensor_destroy"], c
        assert c["list_create"] == c["list_destroy"], c
        assert c["intarray_create"] == c["intarray_destroy"], c
        assert c["executor_create"] == c["executor_destroy"], c
        assert c["malloc"] == c["free"], c
        assert c["bad_destroy"] == 0, c


def expected_pattern(k: int, numel: int, itemsize: int) -> np.ndarray:
    """The bytes the fake writes into output number ``k`` (row-major over the view): byte b of element e
    is ``(37k + 7(e*itemsize + b) + 1) mod 256`` - computed here independently of the C code."""
    j = np.arange(numel * itemsize, dtype=np.int64)
    return ((37 * k + 7 * j + 1) % 256).astype(np.uint8)
