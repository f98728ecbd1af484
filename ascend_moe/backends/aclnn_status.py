"""What the aclnn hardware path can serve on this machine (read from the C++ loader's report).

Placeholder until the dispatcher lands: reports the hardware path as unavailable.
"""
from __future__ import annotations

from typing import Optional


def fake_runtime_loaded() -> bool:
    return False


def aclnn_unavailable_reason(op: str) -> Optional[str]:
    return "the C++ dispatcher for this op is not built yet"


def loader_report() -> dict:
    """The loader's report: libraries tried and symbols resolved."""
    return {"ok": False, "reason": "the C++ dispatcher is not built yet", "libraries": [], "symbols": {}}


def entry_points(op: str) -> list:
    """(entry point name, resolved?, detail) for each aclnn entry point ``op`` may use."""
    return []
