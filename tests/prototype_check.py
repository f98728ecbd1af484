"""Shared by the tests of csrc's aclnn prototype headers: compile a header against parameter lists written
in a test (a reordered or retyped parameter fails ``std::is_same``), and list the typedefs a header has."""
import os
import re
import shutil
import subprocess

CSRC = os.path.join(os.path.dirname(__file__), os.pardir, "csrc")
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def assert_typedefs_match(header, definitions, tmp_path):
    """Each ``name -> parameter list`` (a string, or a list of C types) is exactly the typedef ``name`` of
    ``header``: ``aclnnStatus (*)(params)``."""
    body = [f'#include "{header}"', "#include <type_traits>"]
    for name, params in definitions.items():
        params = params if isinstance(params, str) else ", ".join(params)
        body.append(f"static_assert(std::is_same<{name}, aclnnStatus (*)({params})>::value, \"{name}\");")
    src = tmp_path / "check.cpp"
    src.write_text("\n".join(body) + "\n")
    r = subprocess.run([CXX, "-std=c++17", "-fsyntax-only", "-I", os.path.abspath(CSRC), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def typedefs_in(header):
    """The names of the GetWorkspaceSize typedefs ``header`` declares."""
    with open(os.path.join(CSRC, header)) as f:
        return set(re.findall(r"\(\*(\w+GWS_t)\)", f.read()))
