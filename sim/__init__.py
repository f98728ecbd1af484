"""ascend_moe.sim: the bit-faithful NumPy simulator of the Ascend MoE operators.

Importable without torch.  Each op family has one module; the numerics shared by all of them
(dtypes, rounding casts, int4 packing, FRACTAL_NZ, undefined regions) live in
:mod:`ascend_moe.sim.numerics`.
"""
from .numerics import (  # noqa: F401
    cast, decode_int64_scale, dtype_name, encode_int64_scale, fill_undefined, float_to_int,
    get_undefined_policy, nd_to_nz, np_dtype, nz_storage_shape, nz_to_nd, pack_int4, round_to,
    set_undefined_policy, undefined_policy, unpack_int4,
)
from .gmm import *  # noqa: F401,F403,E402
from .gating import *  # noqa: F401,F403,E402
from .ffn import *  # noqa: F401,F403,E402
from .swiglu_quant import *  # noqa: F401,F403,E402
from .finalize_routing import *  # noqa: F401,F403,E402


def __getattr__(name: str):
    """The checked NumPy twins (``ascend_moe.sim.npu_*``: bind, check, then compute) are generated from
    the op declarations in :mod:`ascend_moe.numpy_ops`; these names forward there on first use, so the
    simulator itself never imports the checker."""
    if name.startswith("npu_"):
        from ascend_moe import numpy_ops
        return getattr(numpy_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
