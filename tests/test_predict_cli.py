"""experiments.predict checks its output path before any work (no predictions computed only to be lost)."""
import subprocess
import sys

import pytest

from cli_helpers import ROOT, env

pytestmark = pytest.mark.unit


def test_csv_into_a_missing_folder_is_refused_before_loading_anything(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.predict", f"--bank={tmp_path}/no_bank", "--task=t",
                           f"--images={tmp_path}", f"--csv={tmp_path}/missing/labels.csv"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --csv {tmp_path}/missing/labels.csv: the folder {tmp_path}/missing does not exist; create it first."]
