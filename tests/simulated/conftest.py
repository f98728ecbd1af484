"""Tests that run on the simulated npu device.

They are collected only in a session that runs with it (``pytest -p ascend_moe.pytest_plugin
--ascend-simulate tests/simulated``); tests/test_simulated_device.py starts that session in a
subprocess, so the main test process never renames torch's PrivateUse1 backend.
"""
from ascend_moe import device

if not device.is_active():
    collect_ignore_glob = ["test_*.py"]
