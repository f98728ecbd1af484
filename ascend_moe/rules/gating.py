"""Placeholder: this op family's rules are being written."""
