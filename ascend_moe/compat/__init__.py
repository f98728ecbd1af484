"""Drop-in torch_npu / MindSpeed spellings for CPU CI."""
