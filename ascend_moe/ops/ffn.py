"""Placeholder: this op family is being written."""
__all__ = []
