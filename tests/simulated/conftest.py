"""Tests that run on the simulated npu device.

They are collected only in a session that runs with it (``pytest -p ascend_moe.pytest_plugin
--ascend-simulate tests/simulated``); tests/test_simulated_device.py starts that session in a
subprocess, so the main test process never renames torch's PrivateUse1 backend.
"""
from ascend_moe import device


def pytest_ignore_collect(collection_path, config):
    # decided at collection time: the plugin activates the device after conftests are loaded
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return True if not device.is_active() else None
    return None
