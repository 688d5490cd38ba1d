"""`python -m tierflow.schemas` writes the JSON Schema files from the record types;
`python -m tierflow.schemas --check` writes nothing and exits 1 listing stale files."""

from __future__ import annotations

import argparse
import sys

from tierflow.schemas import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tierflow.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from its type")
    args = parser.parse_args(argv)
    if args.check:
        names = generate.stale(generate.DIRECTORY)
        for name in names:
            print(f"stale: {generate.DIRECTORY / name} (run python -m tierflow.schemas)", file=sys.stderr)
        return 1 if names else 0
    for name in generate.write(generate.DIRECTORY):
        print(f"wrote {generate.DIRECTORY / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
