"""Run in a fresh process by tests/test_loader.py: load ascend_moe._C by file path (no torch import, so
it starts in milliseconds), perform the requested actions and print one JSON object."""
import importlib.util
import json
import os
import sys
import threading

spec = importlib.util.spec_from_file_location("_C", sys.argv[1])
C = importlib.util.module_from_spec(spec)
spec.loader.exec_module(C)
out = {}
for action in sys.argv[2:]:
    if action == "report":
        out["report"] = C.loader_report()
    elif action.startswith("setenv:"):
        key, _, value = action[len("setenv:"):].partition("=")
        os.environ[key] = value
    elif action == "report2":
        out["report2"] = C.loader_report()
    elif action == "families":
        out["families"] = {f: C.choose(f) for f in C.families()}
    elif action == "soc":
        out["soc"] = C.soc_name()
    elif action == "fake":
        out["fake"] = C.fake_runtime()
    elif action == "threads":
        results = []
        threads = [threading.Thread(target=lambda: results.append(json.dumps(C.loader_report(), sort_keys=True)))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["threads_identical"] = len(set(results)) == 1 and len(results) == 8
    elif action.startswith("run"):
        args = ([("T", None)] * 3 + [("I", None)] + [("T", None)] * 10 + [("s", "relu"), ("i", 0), ("b", False),
                                                                         ("T", None)])
        try:
            C.run("aclnnFFNV2", args)
            out[action] = "returned"
        except C.AclnnError as e:
            out[action] = {"type": "AclnnError", "message": str(e), "status": e.status, "entry": e.entry_point}
    elif action.startswith("fail:"):  # fail:<symbol>:<status>:<message> in the fake runtime
        import ctypes
        symbol, status, message = action[len("fail:"):].split(":", 2)
        fake = ctypes.CDLL(os.path.join(os.environ["ASCEND_HOME_PATH"], "lib64", "libascendcl.so"))
        fake.fake_fail(symbol.encode(), int(status), message.encode())
    elif action == "unfail":
        import ctypes
        ctypes.CDLL(os.path.join(os.environ["ASCEND_HOME_PATH"], "lib64", "libascendcl.so")).fake_reset()
    elif action.startswith("counts"):
        import ctypes
        fake = ctypes.CDLL(os.path.join(os.environ["ASCEND_HOME_PATH"], "lib64", "libascendcl.so"))
        fake.fake_counts.restype = ctypes.c_char_p
        out[action] = json.loads(fake.fake_counts().decode())
    elif action.startswith("probe:"):
        found, detail = C.probe(action[len("probe:"):])
        out["probe"] = {"found": found, "detail": detail}
print(json.dumps(out))
