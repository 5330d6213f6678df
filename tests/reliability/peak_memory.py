"""`python -m tests.reliability.peak_memory OUT ARGS...`: the `pixelmill` command, which writes its own peak resident
memory (VmHWM, KiB) to OUT as it exits.

Measured from inside: the high-water mark of the process image after exec. A parent's `wait4` figure would not
do: Linux carries the pre-exec high-water mark (the forking test process, hundreds of MiB) into `ru_maxrss`.
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    out = Path(sys.argv[1])
    atexit.register(lambda: out.write_text(str(peak_kib())))
    from pixelmill.cli import main as pixelmill_main

    sys.argv = ["pixelmill", *sys.argv[2:]]
    pixelmill_main()


if __name__ == "__main__":
    main()
