"""Point the ROS 2 wheels' rosidl python cmake exports at this venv's include dirs.

The PyPI ROS 2 wheels were built in a manylinux container and their
`*__rosidl_generator_pyExport.cmake` files name that container's Python and numpy
include directories. `colcon build` of an interface package fails until they name
ours. Idempotent: rewriting an already rewritten file changes nothing.

uv installs a wheel's files as hard links into its cache: a file rewritten in place is
rewritten in the cache and in every venv made from it since, which then named the first
venv's numpy (a second clone built against the first clone's .venv, and would break when
that was deleted). So a changed file is replaced by a new one (the link to the cache is
cut), and any earlier venv's include dirs are rewritten as well as the container's.
"""
import os
import re
import sys
import sysconfig
from pathlib import Path

import numpy

PY_INC = re.compile(r'[^";]*/include/python3\.\d+(?=[";])')
NP_INC = re.compile(r'[^";]*/site-packages/numpy/_core/include(?=[";])')


def rewrite(path: Path, text: str) -> None:
    """Write TEXT to PATH as a new file: never through a hard link shared with uv's cache."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(prefix: str) -> int:
    """Rewrite every export file under PREFIX/share; return the number changed."""
    changed = 0
    py_inc, np_inc = sysconfig.get_paths()["include"], numpy.get_include()
    for path in Path(prefix, "share").glob("*/cmake/*__rosidl_generator_pyExport.cmake"):
        text = path.read_text()
        new = NP_INC.sub(lambda _: np_inc, PY_INC.sub(lambda _: py_inc, text))
        if new != text or path.stat().st_nlink > 1:
            rewrite(path, new)
            changed += new != text
    print(f"[setup] rewrote {changed} rosidl export file(s)")
    return changed


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
