"""Placeholder: shared quantised grouped-GEMM arithmetic is being written."""
