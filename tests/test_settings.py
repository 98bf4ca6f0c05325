"""modular.settings: one object for the process-wide switches; scoped changes end with their block."""
import threading

import pytest

from modular import settings
from modular.platform import depthwise, fusion, xla_cpu


def test_scoped_changes_end_with_the_block_and_stay_in_their_thread(monkeypatch):
    monkeypatch.setattr(settings, "_default", settings.Settings())
    seen = {}
    with settings.scoped(divergence_factor=5.0, fusion_boundaries=True):
        assert settings.current().divergence_factor == 5.0 and fusion.is_enabled()
        other = threading.Thread(target=lambda: seen.update(inside=settings.current()))
        other.start()
        other.join()
        with fusion.scoped(False):
            assert not fusion.is_enabled() and settings.current().divergence_factor == 5.0
        assert fusion.is_enabled()
    assert settings.current() == settings.Settings()
    assert seen["inside"] == settings.Settings()          # another thread sees the process default


def test_configure_sets_the_process_default_and_the_switches_read_it(monkeypatch):
    monkeypatch.setattr(settings, "_default", settings.Settings())
    depthwise.enable()
    xla_cpu.enable()
    assert depthwise.is_enabled() and settings.current().xla_cpu_options
    seen = {}
    other = threading.Thread(target=lambda: seen.update(inside=settings.current()))
    other.start()
    other.join()
    assert seen["inside"].shifted_depthwise
    with pytest.raises(ValueError, match="Unknown setting"):
        settings.configure(divergence=3.0)
