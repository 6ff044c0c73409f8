"""What every command line shares: its exit codes, and the entry point that reports a failure the user can act on as
one line on stderr, `PROG: error: MESSAGE`, with its exit code, never as a traceback.

Exit codes, the same for every command:
    0    done
    1    the command's own check failed: training diverged (ssmlm-train), the window and streaming regimes
         disagreed (ssmlm-eval-length, ssmlm-study), a figure got worse (ssmlm-bench compare / --compare), a file
         differs from its manifest (ssmlm-build-corpus --verify)
    2    a problem with the input (an option, a config, a study plan, the data, a model folder, the output folder),
         found before anything was written
    74   writing failed: a full disk, a quota, a read-only filesystem, ... (sysexits' EX_IOERR); the message names the
         path, and what was written before (the newest checkpoint of a run) is left as it was
    130  stopped by Ctrl-C or SIGTERM

Nothing here imports torch: the commands build their parsers and answer --help before importing it.
"""

import argparse
import sys
from collections.abc import Callable

OK = 0
CHECK_FAILED = 1
USAGE = 2
IO_ERROR = 74
STOPPED = 130

# The exceptions that mean a problem with the user's input, by the module that defines each. They are looked up
# among the modules imported so far: one whose module was never imported cannot have been raised, and the commands
# must not import torch just to name them.
INPUT_ERRORS = {
    "ssmlm.tooling.saved_models": "UsageError",
    "ssmlm.training.config": "ConfigError",
    "ssmlm.data.sources": "DataError",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, as every other error of the commands (--help shows the usage)."""

    def error(self, message: str):
        print_error(self.prog, message)
        raise SystemExit(USAGE)


class CommandError(Exception):
    """Ends the command with `message` on stderr (`PROG: error: message`) and exit code `code`."""

    def __init__(self, message: str, code: int = USAGE):
        super().__init__(message)
        self.code = code


def print_error(prog: str, message: str) -> None:
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def input_errors() -> tuple[type[Exception], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in INPUT_ERRORS.items() if module in sys.modules)


def describe_os_error(error: OSError) -> str:
    if error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def run(prog: str, command: Callable[[], int | None]) -> int:
    """Run `command` (which parses the arguments and does the work) and return its exit code (None is 0), never
    raise: an input problem anywhere in it is one line and 2, a failed write or read one line and 74, Ctrl-C one
    line and 130, even while the command still imports its libraries."""
    try:
        return command() or OK
    except SystemExit as exit:  # argparse's, after --help (0) or a usage error (2): returned, as every other code
        return exit.code or OK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return STOPPED
    except CommandError as error:
        print_error(prog, str(error))
        return error.code
    except OSError as error:
        print_error(prog, describe_os_error(error))
        return IO_ERROR
    except Exception as error:
        if not isinstance(error, input_errors()):
            raise
        print_error(prog, str(error))
        return USAGE
