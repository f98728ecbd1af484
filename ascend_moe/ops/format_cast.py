"""Placeholder: npu_format_cast is being written."""
__all__ = []
