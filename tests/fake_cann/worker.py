"""Worker process for the fake-CANN tests: ``python worker.py <root> <main|old>`` then one scenario name
per stdin line; answers one JSON line per scenario ({"name", "ok", "error"}).  ASCEND_HOME_PATH must
point at the fake build ``root`` before the first scenario (the loader runs once per process)."""
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakecann_harness import Fake  # noqa: E402
import fakecann_scenarios as scenarios  # noqa: E402


def main() -> None:
    root, which = sys.argv[1], sys.argv[2]
    table = scenarios.SCENARIOS if which == "main" else scenarios.OLD_CANN_SCENARIOS
    fake = Fake(root)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        try:
            table[name](fake)
            res = {"name": name, "ok": True}
        except BaseException:  # noqa: BLE001 - reported to the parent test
            res = {"name": name, "ok": False, "error": traceback.format_exc()}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
