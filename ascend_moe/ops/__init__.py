"""The torch-facing ops: one module per op family (signature, shape rule, torch.library
registration, autograd).  Importing this package registers ``torch.ops.ascend_moe.*``."""
from .gmm import *  # noqa: F401,F403,E402
from .gating import *  # noqa: F401,F403,E402
from .ffn import *  # noqa: F401,F403,E402
from .swiglu_quant import *  # noqa: F401,F403,E402
from .finalize_routing import *  # noqa: F401,F403,E402
from .format_cast import *  # noqa: F401,F403,E402
from . import _npu_kernels  # noqa: F401,E402  (PrivateUse1 kernels of every op above; keep last)
