"""What every drop-in module shares: the error for names it does not implement.

A shim module answers only for what ascend-moe really computes.  Any other public name raises
:class:`NotImplementedInShim`, which is a ``NotImplementedError`` naming the attribute (so a call of
an op we lack fails loudly, never silently as a ``MagicMock`` would) and also an
``AttributeError`` (so ``hasattr(torch_npu, "npu_foo")`` and ``getattr(torch_npu, "npu_foo",
None)`` say "absent" the way they would for an older torch_npu, and ``mock.patch`` of a name we lack
fails as it would on a module without it).  Dunder and private names raise a plain
``AttributeError``: the import system, ``inspect``, ``pickle`` and pytest probe those and must see
ordinary module behaviour.
"""
from __future__ import annotations

from typing import Iterable


class NotImplementedInShim(NotImplementedError, AttributeError):
    """``<module>.<name>`` is not implemented by the ascend-moe drop-in module."""


def missing_attribute(module_name: str, real_name: str, name: str, implemented: Iterable[str]) -> AttributeError:
    """The exception for ``module_name.name`` (``real_name`` is the package the shim stands in for)."""
    if name.startswith("_"):
        return AttributeError(f"module {module_name!r} has no attribute {name!r}")
    names = ", ".join(sorted(n for n in implemented if not n.startswith("_")))
    return NotImplementedInShim(
        f"{real_name}.{name} is not implemented by the ascend-moe CPU drop-in for {real_name} "
        f"(module {module_name}); it implements only: {names}. Install the real {real_name} on an "
        f"Ascend machine for {name}, or compute it with plain torch in your CPU test.")
