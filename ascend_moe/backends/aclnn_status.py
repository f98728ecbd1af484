"""What the aclnn hardware path can serve on this machine, read from the C++ loader (``ascend_moe._C``).

The loader runs once per process on first use (thread safe): it dlopens ``libascendcl.so``,
``libnnopbase.so``, every ``libopapi_*.so`` and then ``libopapi.so`` from ``LD_LIBRARY_PATH``,
``$ASCEND_HOME_PATH/lib64`` (or ``$ASCEND_TOOLKIT_HOME/lib64``) and the default install roots, and
records per library whether it loaded and why not (``dlerror()``).  Entry points are probed per call
family: both ``X`` and ``XGetWorkspaceSize`` must resolve.  Without CANN every function here answers
cleanly (unavailable, with the reason); nothing crashes.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

# op -> the entry-point families it may use (families and their op-plugin order live in csrc/dispatch.cpp).
# Declared ops take theirs from the aclnn table of their declaration (ascend_moe.opdecl); the grouped
# matmul family, not table-declared yet, is listed here.
_UNDECLARED_FAMILIES: Dict[str, Tuple[str, ...]] = {
    "npu_gmm": ("gmm_v4", "gmm_list"),
    "npu_gmm_v2": ("gmm_v4",),
    "npu_grouped_matmul": ("gmm", "gmm_nz", "gmm_list_v1"),
    "npu_grouped_matmul_add_": ("gmm_add", "gmm_add_v2"),   # in place: not declared yet
}


class _OpFamilies(dict):
    """``OP_FAMILIES[op]``: from the op's declaration when it has one."""

    def _declared(self) -> Dict[str, Tuple[str, ...]]:
        from ..opdecl import all_decls
        return {d.name: d.families() for d in all_decls() if d.aclnn}

    def get(self, op, default=None):
        return self._declared().get(op) or _UNDECLARED_FAMILIES.get(op, default)

    def __getitem__(self, op):
        value = self.get(op)
        if value is None:
            raise KeyError(op)
        return value

    def __contains__(self, op) -> bool:
        return self.get(op) is not None

    def __iter__(self):
        return iter({**_UNDECLARED_FAMILIES, **self._declared()})

    def keys(self):
        return list(iter(self))

    def items(self):
        return [(k, self[k]) for k in self]

    def __len__(self) -> int:
        return len(list(iter(self)))


OP_FAMILIES: Dict[str, Tuple[str, ...]] = _OpFamilies()


def _c():
    try:
        from .. import _C  # noqa: WPS433
    except ImportError as e:
        return None, f"the C++ extension ascend_moe._C is not built ({e})"
    return _C, None


def fake_runtime_loaded() -> bool:
    """True when the loaded libascendcl is the fake CANN runtime of the tests (it exports
    ``ascend_moe_fake_runtime``); only then may CPU tensors take the aclnn path."""
    c, _ = _c()
    if c is None:
        return False
    try:
        return bool(c.runtime_ok() and c.fake_runtime())
    except Exception:  # noqa: BLE001 - a loader problem means: no fake runtime
        return False


def loader_report() -> dict:
    """The loader's report: ``ok``, ``reason``, ``fake_runtime``, ``libraries`` (name, path, loaded,
    required, error), ``search_dirs``, ``missing_symbols`` and ``symbols`` (entry point -> found, detail)."""
    c, err = _c()
    if c is None:
        return {"ok": False, "reason": err, "fake_runtime": False, "libraries": [], "symbols": {},
                "search_dirs": [], "missing_symbols": []}
    rep = dict(c.loader_report())
    symbols = {}
    for name in c.known_entries():
        found, detail = c.probe(name)
        symbols[name] = {"found": bool(found), "detail": detail}
    rep["symbols"] = symbols
    return rep


def entry_points(op: str) -> List[Tuple[str, bool, str]]:
    """(entry point, resolved?, detail) for every aclnn entry point ``op`` may use, in op-plugin's order
    of preference within each call family (e.g. V5 before V4)."""
    c, err = _c()
    families = OP_FAMILIES.get(op, ())
    if c is None:
        return []
    out: List[Tuple[str, bool, str]] = []
    seen = set()
    for fam in families:
        _, candidates = c.choose(fam)
        for name, found, detail in candidates:
            if name not in seen:
                seen.add(name)
                out.append((name, bool(found), detail))
    return out


def aclnn_unavailable_reason(op: str) -> Optional[str]:
    """None when ``op`` can be dispatched to aclnn here (the loader succeeded and at least one of the
    op's call families has a resolvable entry point), else why not.  The per-call choice (e.g. an NZ
    weight needing WeightNz) is checked again by ``aclnn.call``."""
    c, err = _c()
    if c is None:
        return err
    rep = c.loader_report()
    if not rep["ok"]:
        return rep["reason"]
    if op not in OP_FAMILIES:
        return f"the aclnn dispatcher has no binding for {op}"
    eps = entry_points(op)
    if any(found for _, found, _ in eps):
        return None
    return "no aclnn entry point of this op resolves: " + "; ".join(f"{n}: {d}" for n, _, d in eps)


def entry_point_plan(op: str) -> List[Tuple[str, Optional[str], List[Tuple[str, bool]]]]:
    """Per call family of ``op`` (e.g. ``gmm`` for ND weights, ``gmm_nz`` for NZ weights): the entry
    point that would be used (the first that resolves, in op-plugin's order) or None, and the
    candidates with whether each resolved."""
    c, _ = _c()
    if c is None:
        return []
    plan = []
    for fam in OP_FAMILIES.get(op, ()):
        _, candidates = c.choose(fam)
        cands = [(name, bool(found)) for name, found, _ in candidates]
        chosen = next((name for name, found in cands if found), None)
        plan.append((fam, chosen, cands))
    return plan
