"""The commands: `python -m experiments.run` (every experiment), `predict`, `readme`, `project`.

Run as `python -m experiments.NAME`, a command takes seconds to import JAX and TensorFlow; Ctrl-C in that time
ends it with one line and exit code 130, never a traceback. This handler is installed here, when the package
is imported (before the module being run is even compiled); each command's own handling replaces it once it
has started (experiments.run: stop at the next step boundary)."""
import os
import signal
import sys


def interrupted_while_starting(signum, frame) -> None:
    os.write(2, b"interrupted while starting; nothing was run or written.\n")
    os._exit(130)


if sys.argv[:1] == ["-m"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, interrupted_while_starting)
