"""Run several pytest sessions of this suite in ONE process (torch and ascend-moe are imported once).

    python tests/downstream/run_sessions.py '[[], ["--ascend-product", "atlas-inference"]]'

Each session is ``pytest -p ascend_moe.pytest_plugin <the ds_*.py files> <options>`` - the command a
user runs - with its terminal output captured; prints a JSON list of {"options", "rc", "output"}.
Used by tests/test_compat_downstream.py (one subprocess instead of one per product keeps CI fast).
"""
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SUITE = sorted(str(p) for p in HERE.glob("ds_*.py"))


def main(argv):
    results = []
    for options in json.loads(argv[1]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = pytest.main(["-p", "ascend_moe.pytest_plugin", "-p", "no:cacheprovider", "-rA", "--tb=line",
                              *SUITE, *options])
        results.append({"options": options, "rc": int(rc), "output": buf.getvalue()})
    sys.stdout.write(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
