"""Every code block of the documentation pages runs, so the documented API cannot drift from the code.

- ```python blocks run as written, one page at a time, in a fresh folder (a page's blocks share a namespace);
- ```bash blocks: each command is checked the way it can be offline and in seconds. `experiments.run` with a
  `:smoke` config runs for real; with any other config it runs with `--dry_run` (the config file, every
  override key and value are checked; nothing trains). Other `python -m MODULE` commands must accept their
  flags (checked against `--help`). `pip install` is how this suite was installed, `pytest` is this suite, and
  downloads (`curl`, `gsutil`) need the network: those are the only commands not run, and any other is an error.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

from cli_helpers import ROOT, env
from experiments import readme

pytestmark = pytest.mark.e2e

NOT_RUN = {"pip": "the suite's own install", "pytest": "this suite", "curl": "a download", "gsutil": "a download"}


def blocks(page: str, lang: str) -> list[str]:
    with open(page) as f:
        return re.findall(rf"```{lang}\n(.*?)```", f.read(), flags=re.S)


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped, `a && b` split."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


PAGES = readme.pages()
PAGE_IDS = [os.path.relpath(p, ROOT) for p in PAGES]


def test_pages_are_the_front_readme_docs_and_each_papers_page():
    for expected in ("README.md", "docs/api.md", "modular/methods/compat/README.md",
                     "modular/methods/templates/README.md", "modular/methods/patches/README.md",
                     "modular/methods/head2toe/README.md"):
        assert expected in PAGE_IDS


def test_each_results_marker_lives_on_exactly_one_page():
    seen = {}
    for page in PAGES:
        for name in re.findall(r"<!-- results:([a-z0-9_]+) -->", open(page).read()):
            assert name not in seen, f"results:{name} is on {seen[name]} and {page}"
            seen[name] = page
    assert {"compat", "templates", "patches_transfer", "head2toe", "scale"} <= set(seen)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")],
                         ids=[i for p, i in zip(PAGES, PAGE_IDS) if blocks(p, "python")])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for block in blocks(page, "python"):
        exec(compile(block, page, "exec"), namespace)


def _check_command(command: str, cwd: str) -> None:
    words = shlex.split(command)
    if words[0] in NOT_RUN:
        return
    assert words[:2] == ["python", "-m"], f"a documented command this test cannot check: {command}"
    module, args = words[2], words[3:]
    if module == "experiments.run":
        config = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
        extra = [] if config.endswith(":smoke") else ["--dry_run"]
        proc = subprocess.run([sys.executable, "-m", module, *args, *extra], cwd=cwd, env=env(),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        return
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{module} --help failed: {proc.stderr[-2000:]}"
    for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert flag in proc.stdout + proc.stderr, f"{module} has no flag {flag} ({command})"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash")],
                         ids=[i for p, i in zip(PAGES, PAGE_IDS) if blocks(p, "bash")])
def test_bash_blocks_run_or_validate(page, tmp_path):
    for block in blocks(page, "bash"):   # from the repository root, as documented; run folders go to tmp
        for command in commands(block):
            _check_command(command.replace("--workdir=runs/", f"--workdir={tmp_path}/runs/"), ROOT)
