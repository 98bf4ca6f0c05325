"""Ctrl-C at any moment of a run's start ends it with one line and exit code 130: never a traceback, never
swallowed (a run that goes on to exit 0 after Ctrl-C would pass for a finished one)."""
import signal
import subprocess
import time

import pytest

from cli_helpers import ROOT, cli, env

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("delay", [0.2, 1.0, 3.0, 8.0])
def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path, delay):
    p = subprocess.Popen(cli(str(tmp_path / "w")), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, (p.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    # (TensorFlow's C++ logging may print a start-up line before ours, as in test_workdir's Ctrl-C test)
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("interrupted") and len(lines) <= 2, err[-2000:]
