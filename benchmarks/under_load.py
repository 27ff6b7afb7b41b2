"""A command's wall time on a busy machine: N busy loops run beside it, one per core by default.

    python benchmarks/under_load.py [--busy N] -- COMMAND [ARG ...]

A shared 2-core sandbox is rarely idle, and its load comes and goes; busy loops are a load
that repeats. With one loop per core the command gets about half the CPU it would alone,
as beside another developer's test run. Prints one JSON line: the command, the loops, its
exit code and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SPIN = "while True: pass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="busy loops beside the command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to time after --")
    loops = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        began = time.monotonic()
        code = subprocess.run(command).returncode
        wall = time.monotonic() - began
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    print(json.dumps({"command": " ".join(command), "busy": args.busy, "returncode": code, "wall_s": round(wall, 1)}))
    return code


if __name__ == "__main__":
    sys.exit(main())
