"""Copy the tables of finished runs into the README: no number there is typed by hand.

  python -m experiments.readme /tmp/h2t /tmp/patches [--readme README.md] [--check]

Each workdir's results.json carries `readme_tables: {name: markdown}` and the README holds the markers
`<!-- results:NAME -->` ... `<!-- /results:NAME -->` for each name. `--check` changes nothing and exits
1 when the README differs from the runs (a stale table).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from modular import reporting


def tables_of(workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} does not exist: finish the run first (python -m experiments.run ...).")
    with open(path) as f:
        tables = json.load(f).get("readme_tables")
    if not tables:
        raise SystemExit(f"{path} has no readme_tables: it was written by an experiment that makes none.")
    return tables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--readme", default=os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale; change nothing")
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        old = f.read()
    new = old
    for workdir in args.workdirs:
        for name, body in tables_of(workdir).items():
            try:
                new = reporting.replace_readme_section(new, name, body)
            except ValueError as e:
                raise SystemExit(str(e))
            print(f"{name}: from {workdir}")
    if args.check:
        if new != old:
            print("The README's tables differ from these runs.", file=sys.stderr)
            return 1
        return 0
    if new != old:
        tmp = f"{args.readme}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(new)
        os.replace(tmp, args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
