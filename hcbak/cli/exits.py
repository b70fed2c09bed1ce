"""The one place where exceptions become exit codes, for both ways a command runs.

`main.run` runs every command through Typer; `entry` runs the common forms of
`hcbak job run` without loading Typer at all. Both end here, so an error looks and
exits the same whichever way it came. Nothing here imports Typer.
"""

import os
import sys
from collections.abc import Callable

from hcbak.errors import ExitCode, HcbakError, describe_os_error


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HCBAK_DEBUG") == "1"


def interrupted() -> int:
    sys.stderr.write("interrupted\n")
    return int(ExitCode.INTERRUPTED)


def guarded(call: Callable[[], int], argv: list[str]) -> int:
    """`call()`'s exit code; an error becomes one line on stderr and its documented
    code, with the traceback only under --debug (or HCBAK_DEBUG=1)."""
    try:
        return call()
    except HcbakError as exc:
        if debug_requested(argv):
            _print_traceback()
        sys.stderr.write(f"error: {exc.one_line()}\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:
        return int(ExitCode.OK)
    except OSError as exc:  # the system said no (a full disk, permissions, a missing path)
        debug = debug_requested(argv)
        if debug:
            _print_traceback()
        sys.stderr.write(f"error: {describe_os_error(exc)}\n")
        return int(ExitCode.FAILED)
    except Exception as exc:  # a bug: keep it one line unless --debug
        debug = debug_requested(argv)
        if debug:
            _print_traceback()
        more = "" if debug else "; rerun with --debug for details"
        sys.stderr.write(f"error: internal error ({type(exc).__name__}){more}\n")
        return int(ExitCode.FAILED)


def _print_traceback() -> None:
    import traceback  # --debug only: it costs 6 ms to import

    traceback.print_exc()


def exit_now(code: int) -> None:
    """Exit without the interpreter's module teardown.

    With cryptography, typer and the rest loaded, that teardown takes 0.1-0.2 s,
    which every cron run and every scripted call would pay after its work is done.
    Commands close what they open themselves; the atexit handlers (logging, thread
    pools) still run, and the output is flushed, before the process ends.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to tell
            pass
    os._exit(code)
