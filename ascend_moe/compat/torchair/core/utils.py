"""``torchair.core.utils`` of the TorchAir stand-in: its ``logger`` (a standard logging.Logger)."""
import logging

__ascend_moe_shim__ = True
logger = logging.getLogger("torchair")
