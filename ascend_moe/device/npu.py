"""``torch.npu`` (and ``torch_npu.npu``) of the simulated npu device.

Answers what torch_npu's module answers, for a device whose memory is host memory and whose
kernels run synchronously on the host: streams are ordering labels, events are host timestamps,
``synchronize`` has nothing to wait for, memory figures are the simulated allocations and the
host's own free/total bytes.  ``get_device_name()`` is the SoC of the simulated product (e.g.
``Ascend910B2`` for atlas-a2), so code that picks kernels by SoC takes the path of that product.
Any other name the real module has raises NotImplementedError naming it.
"""
from __future__ import annotations

import contextlib
import os
import types
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

import torch

from ..compat._shim import missing_attribute

__ascend_moe_shim__ = True

# The SoC each simulated product reports (the first SoC of its family that torch_npu users see).
SOC_OF_PRODUCT = {
    "atlas-a2": "Ascend910B2", "atlas-a3": "Ascend910_9391", "atlas-200i-500-a2": "Ascend310B1",
    "atlas-inference": "Ascend310P3", "atlas-training": "Ascend910A", "ascend-950": "Ascend950PR",
}
# AI core counts of those SoCs (cube, vector), as get_device_properties reports them.
_CORES = {"Ascend910B2": (24, 48), "Ascend910_9391": (24, 48), "Ascend310B1": (1, 1),
          "Ascend310P3": (8, 7), "Ascend910A": (32, 0), "Ascend950PR": (32, 64)}

DeviceLike = Union[None, int, str, torch.device]


def _ext():
    from ._build import load_extension
    return load_extension()


def _index(device: DeviceLike = None, optional: bool = True) -> int:
    if device is None:
        return current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type not in ("npu", "privateuseone"):
        raise ValueError(f"expected an npu device, got {device}")
    return current_device() if device.index is None else device.index


def is_available() -> bool:
    """True while the simulation is active."""
    from . import is_active
    return is_active()


def is_initialized() -> bool:
    return is_available()


def init() -> None:
    """Nothing to initialise: the simulated device is ready once active."""


def device_count() -> int:
    return _ext().device_count()


def current_device() -> int:
    return _ext().current_device()


def set_device(device: DeviceLike) -> None:
    _ext().set_device(_index(device))


class device:
    """Context manager selecting the current npu (``with torch.npu.device(1): ...``)."""

    def __init__(self, device: DeviceLike):
        self.idx = -1 if device is None else _index(device)
        self.prev = -1

    def __enter__(self):
        self.prev = current_device()
        if self.idx >= 0:
            set_device(self.idx)
        return self

    def __exit__(self, *exc):
        set_device(self.prev)
        return False


class device_of(device):
    """Context manager selecting the device of a tensor (CPU tensors change nothing)."""

    def __init__(self, obj: torch.Tensor):
        super().__init__(obj.get_device() if obj.device.type == "npu" else None)


def synchronize(device: DeviceLike = None) -> None:
    """Every kernel already ran on the host when its call returned: nothing is pending."""
    _index(device)


class Stream(torch.Stream):
    """An npu stream.  Kernels run synchronously, so a stream orders nothing that is not already in order."""

    def __new__(cls, device: DeviceLike = None, priority: int = 0, **kwargs: Any):
        if kwargs:  # torch's own (stream_id=, device_index=, device_type=) form
            return super().__new__(cls, priority=priority, **kwargs)
        return super().__new__(cls, device=torch.device("npu", _index(device)), priority=priority)

    def wait_event(self, event: "Event") -> None:
        event.wait(self)  # kernels already ran: nothing to wait for, but the event must be valid

    def wait_stream(self, stream: "Stream") -> None:
        self.wait_event(stream.record_event())

    def record_event(self, event: Optional["Event"] = None) -> "Event":
        event = Event() if event is None else event
        event.record(self)
        return event

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    @property
    def npu_stream(self) -> int:
        return self.stream_id


class Event:
    """An npu event: a host timestamp taken when recorded (all earlier work has finished by then).

    Wraps a ``torch.Event`` of the npu device (whose C++ side keeps the timestamp)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.enable_timing = enable_timing
        self._event = torch.Event(device=torch.device("npu", current_device()), enable_timing=enable_timing,
                                  blocking=blocking, interprocess=interprocess)
        self._recorded = False

    def record(self, stream: Optional[Stream] = None) -> None:
        self._event.record(current_stream() if stream is None else stream)
        self._recorded = True

    def wait(self, stream: Optional[Stream] = None) -> None:
        self._event.wait(current_stream() if stream is None else stream)

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end_event: "Event") -> float:
        """Milliseconds between this event's record and ``end_event``'s (both must be recorded)."""
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with enable_timing=True to measure elapsed time")
        if not (self._recorded and end_event._recorded):
            raise RuntimeError("Both events must be recorded before calculating elapsed time")
        return self._event.elapsed_time(end_event._event)

    @property
    def device(self) -> torch.device:
        return self._event.device

    def __repr__(self) -> str:
        return f"<torch.npu.Event device={self.device} recorded={self._recorded}>"


_PRIVATEUSE1_DEVICE_TYPE = 20  # c10::DeviceType::PrivateUse1


def _stream_of(dev: int, stream_id: int) -> Stream:
    return Stream(stream_id=stream_id, device_index=dev, device_type=_PRIVATEUSE1_DEVICE_TYPE)


def current_stream(device: DeviceLike = None) -> Stream:
    dev = _index(device)
    return _stream_of(dev, _ext().current_stream_id(dev))


def default_stream(device: DeviceLike = None) -> Stream:
    return _stream_of(_index(device), 0)


def set_stream(stream: Stream) -> None:
    if stream is not None:
        _ext().set_current_stream_id(stream.device_index, stream.stream_id)


@contextlib.contextmanager
def stream(stream: Optional[Stream]) -> Iterator[Optional[Stream]]:
    """Context manager making ``stream`` the current stream of its device."""
    if stream is None:
        yield None
        return
    prev = current_stream(stream.device_index)
    set_stream(stream)
    try:
        yield stream
    finally:
        set_stream(prev)


def empty_cache() -> None:
    """Freed npu memory goes straight back to the host allocator: no cache of its own to empty.  What the
    simulator keeps of its large outputs for reuse (:mod:`ascend_moe.kernels.output_pool`) is given back."""
    from ..kernels import output_pool  # (the simulator's package: imported when asked, not with the device)
    output_pool.release()


def memory_allocated(device: DeviceLike = None) -> int:
    """Bytes held by live npu tensors on the device."""
    return int(_ext().memory_allocated(_index(device)))


def max_memory_allocated(device: DeviceLike = None) -> int:
    return int(_ext().max_memory_allocated(_index(device)))


def reset_peak_memory_stats(device: DeviceLike = None) -> None:
    _ext().reset_peak_memory_stats(_index(device))


reset_max_memory_allocated = reset_peak_memory_stats


def memory_reserved(device: DeviceLike = None) -> int:
    return memory_allocated(device)


def max_memory_reserved(device: DeviceLike = None) -> int:
    return max_memory_allocated(device)


def _host_memory() -> tuple:
    """(available, total) bytes of the host, from /proc/meminfo (or sysconf elsewhere)."""
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
        return info.get("MemAvailable", info["MemFree"]), info["MemTotal"]
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def mem_get_info(device: DeviceLike = None) -> tuple:
    """(free, total) bytes: the host's, since the device memory is host memory."""
    _index(device)
    return _host_memory()


def _soc() -> str:
    from . import simulated_product
    return SOC_OF_PRODUCT[simulated_product()]


def get_device_name(device: DeviceLike = None) -> str:
    _index(device)
    return _soc()


@dataclass(frozen=True)
class NPUDeviceProperties:
    name: str
    total_memory: int
    cube_core_num: int
    vector_core_num: int
    L2_cache_size: int = 192 * 1024 * 1024


def get_device_properties(device: DeviceLike = None) -> NPUDeviceProperties:
    _index(device)
    soc = _soc()
    cube, vector = _CORES.get(soc, (0, 0))
    return NPUDeviceProperties(soc, _host_memory()[1], cube, vector)


def get_device_capability(device: DeviceLike = None) -> None:
    """torch_npu answers None: NPUs have no CUDA-style compute capability."""
    _index(device)
    return None


def manual_seed(seed: int) -> None:
    """Random numbers of npu tensors are drawn by the CPU generator, so this seeds it."""
    torch.default_generator.manual_seed(int(seed))


manual_seed_all = manual_seed


def seed() -> None:
    torch.default_generator.seed()


seed_all = seed


def initial_seed() -> int:
    return torch.default_generator.initial_seed()


def get_rng_state(device: DeviceLike = None) -> torch.Tensor:
    return torch.default_generator.get_state()


def set_rng_state(new_state: torch.Tensor, device: DeviceLike = None) -> None:
    torch.default_generator.set_state(new_state)


def get_amp_supported_dtype() -> list:
    """Dtypes torch.autocast("npu") accepts (autocast on the simulated device changes no dtype)."""
    return [torch.float16, torch.bfloat16, torch.float32]


def is_bf16_supported() -> bool:
    return True


def _is_in_bad_fork() -> bool:
    return False


def _get_device_index(device: DeviceLike = None, optional: bool = False) -> int:
    return _index(device)


# torch_npu.npu.config.allow_internal_format and friends: plain settable attributes.
config = types.SimpleNamespace(allow_internal_format=False)
# torch.npu.amp-like attributes code reaches through torch.npu
aclnn = types.SimpleNamespace(allow_hf32=False)

IMPLEMENTED = tuple(sorted(
    n for n, v in dict(globals()).items()
    if not n.startswith("_") and n not in {"annotations", "contextlib", "os", "types", "dataclass", "Any",
                                           "Iterator", "Optional", "Union", "torch", "missing_attribute",
                                           "DeviceLike", "IMPLEMENTED", "SOC_OF_PRODUCT"}))


def __getattr__(name: str) -> Any:
    raise missing_attribute(__name__, "torch.npu", name, IMPLEMENTED)
