"""Point the ROS 2 wheels' rosidl python cmake exports at this venv's include dirs.

The PyPI ROS 2 wheels were built in a manylinux container and their
`*__rosidl_generator_pyExport.cmake` files name that container's Python and numpy
include directories. `colcon build` of an interface package fails until they name
ours. Idempotent: rewriting an already rewritten file changes nothing.
"""
import re
import sys
import sysconfig
from pathlib import Path

import numpy

PY_INC = re.compile(r"/opt/python/cp\d+-cp\d+/include/python[\d.]+")
NP_INC = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python[\d.]+/site-packages/numpy/_core/include")


def main(prefix: str) -> int:
    """Rewrite every export file under PREFIX/share; return the number changed."""
    changed = 0
    for path in Path(prefix, "share").glob("*/cmake/*__rosidl_generator_pyExport.cmake"):
        text = path.read_text()
        new = NP_INC.sub(numpy.get_include(), PY_INC.sub(sysconfig.get_paths()["include"], text))
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"[setup] rewrote {changed} rosidl export file(s)")
    return changed


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
