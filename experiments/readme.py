"""Copy the tables of finished runs into the documentation pages: no number there is typed by hand.

  python -m experiments.readme /tmp/h2t /tmp/patches [--readme PAGE ...] [--check]

Each workdir's results.json carries `readme_tables: {name: markdown}`, and exactly one page holds the markers
`<!-- results:NAME -->` ... `<!-- /results:NAME -->` for each name. The pages are the front README, docs/*.md
and each paper's modular/methods/<paper>/README.md (`--readme` names others). `--check` changes nothing and
exits 1 when a page differs from the runs (a stale table).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import sys

from modular import reporting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pages(root: str = ROOT) -> list[str]:
    """Every documentation page of the repository, front README first."""
    found = [os.path.join(root, "README.md")]
    found += sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    found += sorted(glob.glob(os.path.join(root, "modular", "methods", "*", "README.md")))
    return [p for p in found if os.path.isfile(p)]


def tables_of(workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} does not exist: finish the run first (python -m experiments.run ...).")
    with open(path) as f:
        tables = json.load(f).get("readme_tables")
    if not tables:
        raise SystemExit(f"{path} has no readme_tables: it was written by an experiment that makes none.")
    return tables


def _page_with_marker(texts: dict[str, str], name: str) -> str:
    start = reporting.README_MARK.format(name=name)
    holders = [page for page, text in texts.items() if start in text]
    if len(holders) != 1:
        where = "no page" if not holders else f"{len(holders)} pages ({', '.join(holders)})"
        raise SystemExit(f"The {name!r} tables need exactly one page with a '{start}' line followed by its "
                         f"'{reporting.README_END.format(name=name)}' line; {where} has one.")
    return holders[0]


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)   # started: Ctrl-C is a KeyboardInterrupt again
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--readme", action="append", default=None,
                        help="a page to fill (repeatable); default: README.md, docs/*.md, modular/methods/*/README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale; change nothing")
    args = parser.parse_args(argv)
    old = {}
    for page in args.readme or pages():
        with open(page) as f:
            old[page] = f.read()
    new = dict(old)
    for workdir in args.workdirs:
        for name, body in tables_of(workdir).items():
            page = _page_with_marker(new, name)
            try:
                new[page] = reporting.replace_readme_section(new[page], name, body)
            except ValueError as e:
                raise SystemExit(str(e))
            print(f"{name}: from {workdir} into {os.path.relpath(page)}")
    stale = [page for page in new if new[page] != old[page]]
    if args.check:
        if stale:
            print(f"These pages differ from the runs: {', '.join(map(os.path.relpath, stale))}.", file=sys.stderr)
            return 1
        return 0
    for page in stale:
        tmp = f"{page}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(new[page])
        os.replace(tmp, page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
