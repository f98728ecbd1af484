"""The torch-facing ops: one module per op family (signature, shape rule, torch.library
registration, autograd).  Importing this package registers ``torch.ops.ascend_moe.*``."""
