"""Launch any experiment from an ml_collections config:

  python -m experiments.run --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]

Writes DIR/config.json, DIR/results.json, TensorBoard events and orbax checkpoints under DIR; a second
run on the same DIR resumes from the last checkpoint (with the same config, or `--config.resume_changed=True`).
One run per DIR at a time. Bad input ends with one sentence and exit code 1; Ctrl-C with one line and 130.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import os
import re
import signal
import sys
import time
import traceback

from absl import app, flags, logging

from experiments import interrupted_while_starting
from ml_collections import config_flags



class _ListParser(flags.ArgumentParser):
    """Overrides of list-valued config keys (grids, target and task lists), which ml_collections' flags do not
    support: `--config.KEY='[0.3, 0.1]'` or `'(0.3, 0.1)'` (Python literals), or `a,b,c` for a list of strings."""

    def parse(self, argument):
        if isinstance(argument, (list, tuple)):
            return list(argument)
        try:
            value = ast.literal_eval(argument)
        except (ValueError, SyntaxError):
            value = [part.strip() for part in str(argument).split(",") if part.strip()]
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def flag_type(self):
        return "list"


try:  # ml_collections keeps its parsers in a private table; without it, lists stay unsupported (their own error)
    from ml_collections.config_flags import config_flags as _ml_config_flags
    _ml_config_flags._FIELD_TYPE_TO_PARSER.setdefault(list, _ListParser())
except (ImportError, AttributeError):
    pass

EXPERIMENTS = ("pretrain", "compat", "templates", "patches", "head2toe", "tour", "adapt")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/NAME.py[:ARG] file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and TensorBoard events.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check the config file and every override, print the resolved "
                             "config and exit without touching the workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (reported as one sentence), as opposed to bugs (full traceback)."""
    from modular import checkpoint, params, train, workdir
    return (ValueError, KeyError, OSError, checkpoint.CheckpointError, params.SubtreeMismatchError,
            train.NonFiniteLossError, workdir.WorkdirError)


def run(config, workdir: str) -> dict:
    """Run `config.experiment` in `workdir` (locked for the run) and write config.json and results.json there.

    An experiment whose workdir holds many runs (adapt: a bank of tasks) names each run's own directory
    with `run_dir(config, workdir)`; the config record and results of that run live there (results.json
    is also copied to the workdir)."""
    import jax
    from modular import parallel, protocol, reporting, settings, train
    from modular import workdir as wd

    parallel.maybe_initialize_distributed()
    name = config.get("experiment", None)
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r} in config.experiment; known: {', '.join(EXPERIMENTS)}.")
    module = importlib.import_module(f"experiments.{name}")
    is_main = jax.process_index() == 0
    workdir = wd.prepare(workdir)
    record = config.to_dict()
    with wd.lock(workdir) if is_main else contextlib.nullcontext():
        own = wd.prepare(module.run_dir(config, workdir)) if hasattr(module, "run_dir") else workdir
        changes = wd.check_config(own, record, resume_changed=bool(config.get("resume_changed", False))) \
            if is_main else []
        if is_main and not wd.has_run(own):
            wd.write_config(own, record)  # a fresh run: the record of what is about to be written
        attempts = wd.start_attempt(own, changes) if is_main else []
        settings.configure(divergence_factor=float(config.get("divergence_factor",
                                                              settings.Settings.divergence_factor)))
        start = time.time()
        try:
            results = dict(module.run(config, workdir))
        except BaseException as e:   # every way a run ends is in the log, with its sentence
            if is_main:
                status = ("interrupted" if isinstance(e, KeyboardInterrupt) else
                          "diverged" if isinstance(e, train.NonFiniteLossError) else "failed")
                message = str(e.args[0] if isinstance(e, KeyboardInterrupt) and e.args else e).strip()
                wd.end_attempt(own, status, message.splitlines()[0] if message else type(e).__name__,
                               wall_seconds=round(time.time() - start, 1))
            raise
        results.setdefault("wall_seconds", time.time() - start)
        results.setdefault("devices", f"{jax.device_count()} x {jax.devices()[0].platform} in "
                                      f"{jax.process_count()} process(es)")
        if is_main:
            attempts = wd.end_attempt(own, "finished", wall_seconds=round(results["wall_seconds"], 1))
        results["attempts"] = attempts
        if is_main:
            wd.write_config(own, record)  # the run finished: config.json describes its results
            for directory in {own, workdir}:
                reporting.write_json(os.path.join(directory, "results.json"), results)
            if results.get("claims"):
                print(protocol.claims_table(results["claims"]), flush=True)
            print(f"wrote {os.path.join(workdir, 'results.json')}", flush=True)
    return results


def _sentence(error: BaseException) -> str:
    """One sentence for a flag or config-file error: the innermost message, without traceback or type."""
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
    if raised:
        return raised[-1].split(": ", 1)[1]
    return lines[0] if lines else type(error).__name__


def _check_overrides(config_arg: str, argv: list[str]) -> None:
    """Each --config.KEY=VALUE must name a key of the config file's config (checked before absl applies them)."""
    path, _, arg = config_arg.partition(":")
    spec = importlib.util.spec_from_file_location("_config_under_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    for arg in argv[1:]:
        m = re.match(r"^--config\.([^=]+)", arg)
        if not m:
            continue
        node = config
        for part in m.group(1).split("."):
            if not hasattr(node, "keys") or part not in node.keys():
                raise ValueError(f"Unknown config key {m.group(1)!r} in {arg}; the config has no {part!r} there.")
            node = node[part]
        if isinstance(node, list) and "=" in arg:
            _check_list_override(m.group(1), node, _ListParser().parse(arg.split("=", 1)[1]))


def _check_list_override(key: str, default: list, value: list) -> None:
    """A list override keeps the kind of its elements: numbers for a grid of numbers, strings for names."""
    def kind(v):
        return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
    kinds = {kind(v) for v in default}
    if len(kinds) == 1 and value and any(kind(v) not in kinds for v in value):
        raise ValueError(f"--config.{key} must be a list of {kinds.pop()}s like {default!r}, got {value!r}.")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with every error as one sentence and exit code 1 (no usage text, no traceback)."""
    try:
        for arg in argv[1:]:
            m = re.match(r"^--config=(([^:]+).*)$", arg)
            if m and not os.path.isfile(m.group(2)):
                _exit_with(f"config file {m.group(2)} does not exist.", 1)
            if m:
                _check_overrides(m.group(1), argv)
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        m = re.search(r"Unknown command line flag '(config\.[^']+)'", str(e))
        _exit_with(f"unknown config key {m.group(1)[7:]!r}." if m else _sentence(e), 1)
    except Exception as e:  # a config file that fails to load, an override of the wrong type or key
        _exit_with(_sentence(e), 1)
    return rest


def _exit_with(message: str, code: int) -> None:
    """Print one line and leave at once: interpreter teardown of async writers must not add tracebacks."""
    print(f"error: {message}" if code == 1 else message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


def main(argv) -> None:
    if len(argv) > 1:
        _exit_with(f"unexpected arguments: {' '.join(argv[1:])}.", 1)
    if _DRY_RUN.value:
        print(_CONFIG.value, flush=True)
        print(f"dry run: the config and its overrides are valid; nothing was written to {_WORKDIR.value}.", flush=True)
        return
    from modular import platform, train
    platform.tune_cpu()  # before anything starts JAX; MODULAR_CPU_TUNING=off turns it off
    train.stop_between_steps_on_sigint()
    logging.set_verbosity(logging.WARNING)  # orbax/clu INFO logs drown the progress lines we print
    logging.get_absl_handler().addFilter(_no_orbax_errors)
    sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
    from modular import compilation_cache
    compilation_cache.enable(_CONFIG.value.get("compilation_cache", ""))  # before the first compilation
    try:
        run(_CONFIG.value, _WORKDIR.value)
        if train.interrupt_pending():   # a Ctrl-C that a library caught: the run still ends as interrupted
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        from modular import workdir as wd
        last = wd.latest_checkpoint(os.path.abspath(_WORKDIR.value)) if os.path.isdir(_WORKDIR.value) else None
        where = f"step {last[1]} in {last[0]}" if last else "none was saved"
        _exit_with(f"interrupted; last checkpoint: {where}. Run the same command to resume.", 130)
    except user_errors() as e:
        if os.environ.get("MODULAR_DEBUG"):
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, OSError) and e.strerror and e.filename:   # e.g. a full disk while writing results
            msg = f"could not write {e.filename} ({e.strerror})"
        _exit_with(str(msg), 1)


def _no_orbax_errors(record) -> bool:
    """Orbax logs each failed background save with its traceback from every writer thread (hundreds of lines);
    the run stops on the failure with one sentence of its own (checkpoint.raise_save_errors)."""
    return not (record.levelno >= logging.converter.STANDARD_ERROR and "/orbax/" in record.pathname)


def _quiet_closed_loops(hook):
    """A failed checkpoint write leaves tensorstore callbacks firing into orbax's closed event loop; each
    reports 'RuntimeError: Event loop is closed' as an unraisable exception (dozens of tracebacks). They say
    nothing the run's own sentence does not; every other unraisable exception is reported as before."""
    def unraisablehook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        hook(unraisable)
    return unraisablehook


if __name__ == "__main__":
    # Before the heavy imports (JAX, TensorFlow): Ctrl-C while starting is one line, never a traceback.
    signal.signal(signal.SIGINT, interrupted_while_starting)   # also set by the package, for the imports above
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main, flags_parser=_parse_flags)
