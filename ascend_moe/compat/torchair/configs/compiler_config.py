"""``torchair.configs.compiler_config.CompilerConfig`` of the TorchAir stand-in.

A tree of option groups that accepts every attribute user code sets (the real class has dozens,
such as ``debug.graph_dump.type``, ``experimental_config.frozen_parameter``,
``mode``); each keeps the value it is given and reads back a default (None) for one never set.
"""
from __future__ import annotations

from typing import Any, Dict

__ascend_moe_shim__ = True


class _Options:
    """An option group: any attribute may be set, read back, or descended into."""

    def __init__(self, path: str, **defaults: Any):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_values", dict(defaults))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        values: Dict[str, Any] = object.__getattribute__(self, "_values")
        if name not in values:
            values[name] = _Options(f"{self._path}.{name}")
        return values[name]

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[name] = value

    def as_dict(self) -> Dict[str, Any]:
        return {k: (v.as_dict() if isinstance(v, _Options) else v) for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"<{self._path} {self.as_dict()}>"


class CompilerConfig(_Options):
    """TorchAir's compiler configuration; every option is kept, none changes the simulation."""

    def __init__(self) -> None:
        super().__init__("CompilerConfig", mode="max-autotune")
        self.debug.graph_dump.type = None
        self.debug.graph_dump.path = None
        self.experimental_config.frozen_parameter = False
        self.experimental_config.tiling_schedule_optimize = False
