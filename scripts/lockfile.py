"""requirements-lock.txt: write it from `pip freeze`, or compare a freeze with it (stdlib only).

    pip freeze --all --exclude-editable | python3 scripts/lockfile.py write requirements-lock.txt --python 3.11
    pip freeze --all --exclude-editable | python3 scripts/lockfile.py diff requirements-lock.txt

torch stays out of the lock (pyproject.toml pins it; its build differs between CPU and CUDA machines), and
so do the CUDA runtime packages that only a CUDA build of torch pulls in.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

UNLOCKED = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(lines: list[str]) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines (comments and others skipped)."""
    pins: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" not in line or line.startswith("-"):
            continue
        name, version = line.split("==", 1)
        pins[canonical(name)] = version.strip()
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("write", "diff"))
    parser.add_argument("lock", type=Path)
    parser.add_argument("--python", default="", help="the Python version the freeze came from")
    parser.add_argument("--resolved", default="", help="when the versions were resolved (UTC)")
    args = parser.parse_args(argv)
    frozen = {k: v for k, v in parse(sys.stdin.read().splitlines()).items() if not UNLOCKED.match(k)}
    if args.command == "write":
        header = [
            "# Exact versions of every dependency, as tested: scripts/setup.sh installs with -c this file.",
            "# Refresh: bash scripts/test_latest.sh && bash scripts/lock.sh (then bash scripts/test.sh).",
            f"# Resolved {args.resolved or 'unknown'} on Python {args.python or 'unknown'}, CPU (x86_64).",
            "# torch is pinned in pyproject.toml instead (CPU and CUDA builds differ).",
        ]
        body = [f"{name}=={frozen[name]}" for name in sorted(frozen)]
        tmp = args.lock.with_name(args.lock.name + ".tmp")
        tmp.write_text("\n".join(header + body) + "\n")
        tmp.replace(args.lock)
        return 0
    locked = parse(args.lock.read_text().splitlines()) if args.lock.is_file() else {}
    changes = [
        f"  {name}: {locked.get(name, '(not locked)')} -> {frozen.get(name, '(gone)')}"
        for name in sorted(set(locked) | set(frozen))
        if locked.get(name) != frozen.get(name)
    ]
    print("\n".join(changes) if changes else "  none: the lock is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
