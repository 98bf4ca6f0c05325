"""Ctrl-C at any moment of a run's start ends it with one line and exit code 130: never a traceback, never
swallowed (a run that goes on to exit 0 after Ctrl-C would pass for a finished one)."""
import os
import signal
import subprocess
import time

import pytest

from cli_helpers import ROOT, cli, env

pytestmark = pytest.mark.e2e


def _wait_for_our_imports(pid: int, timeout: float = 60.0) -> None:
    """Until the interpreter has finished its own start-up (the `site` module) and imports the run's packages
    (a shared library from site-packages is mapped): a Ctrl-C during Python's own start-up is Python's
    "Fatal Python error: init_import_site", before any line of ours runs; on a loaded machine 0.2 s falls there."""
    maps, end = f"/proc/{pid}/maps", time.time() + timeout
    while os.path.exists(maps) and time.time() < end:
        with open(maps) as f:
            if "site-packages" in f.read():
                return
        time.sleep(0.01)


# Steps enough that no delay outlives the run: on a fast machine with a warm compilation cache the smoke
# config's 60 steps end within 8 s, and a Ctrl-C after exit would test nothing (it failed as exit 0).
LONG = ["--config.num_steps=1000000", "--config.checkpoint_every=1000000", "--config.log_every=1000000"]


@pytest.mark.parametrize("delay", [0.2, 1.0, 3.0, 8.0])
def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path, delay):
    p = subprocess.Popen(cli(str(tmp_path / "w"), *LONG), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_for_our_imports(p.pid)
    time.sleep(delay)
    assert p.poll() is None, f"the run ended (exit {p.returncode}) before the Ctrl-C {delay} s into it"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, (p.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    # (TensorFlow's C++ logging may print a start-up line before ours, as in test_workdir's Ctrl-C test)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("interrupted") and len(lines) <= 2, err[-2000:]
