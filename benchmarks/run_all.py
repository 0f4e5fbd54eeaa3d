"""Run every benchmark in this folder, each in a fresh process, and print its tables.

``make bench`` calls this. Each ``bench_*.py`` prints Markdown ratio tables.
Pass names to run a subset: ``python benchmarks/run_all.py schedules``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(a in s.stem for a in argv)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    failed = 0
    for script in scripts:
        print(f"\n## {script.stem}\n", flush=True)
        rc = subprocess.call([sys.executable, str(script)], env=env, cwd=HERE.parent)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
