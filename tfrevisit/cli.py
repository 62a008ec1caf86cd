"""What the command lines do with errors: a user's mistake is one line.

The rule. A *user error* is
  - a `UserError`, raised wherever input is checked (flags, gin bindings,
    paths, numeric values, caches and checkpoints a run finds on disk); or
  - a ValueError, FileNotFoundError, NotADirectoryError, or gin's error for a
    missing required binding, raised *before the command's work begins*: while
    it parses gin, looks names up in the registries, opens its data or its
    model. Library code calls `begin_work()` where the checks end (training
    before it writes its workdir, evaluation before it extracts features,
    export before it saves).
A user error prints `error: <message>` (one line) on stderr and exits with
status 2. Every other exception, including a ValueError raised once the work
has begun, is unexpected and keeps its traceback. `--verbose` (or the
environment variable TFREVISIT_VERBOSE=1) prints the traceback of user errors
too.
"""
import argparse
import functools
import os
import sys
import traceback

VERBOSE_ENV = "TFREVISIT_VERBOSE"
EXIT_USER_ERROR = 2

# Errors that are the user's when raised before `begin_work()`.
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)
# gin raises a RuntimeError with this message for a missing gin.REQUIRED.
_GIN_REQUIRED = "Required bindings for"

_state = {"work_begun": False}


class UserError(ValueError):
  """A mistake in the command's input; the message says how to fix it."""


def begin_work() -> None:
  """Marks the end of the running command's input checks (see the rule)."""
  _state["work_begun"] = True


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is a user error under the module's rule."""
  if isinstance(error, UserError):
    return True
  if _state["work_begun"]:
    return False
  return (isinstance(error, INPUT_ERRORS) or
          (isinstance(error, RuntimeError) and str(error).startswith(_GIN_REQUIRED)))


def one_line(error: BaseException) -> str:
  """`error`'s message on one line, without gin's "In call to configurable"
  trailer."""
  lines = [line.strip() for line in str(error).splitlines()]
  lines = [line for line in lines
           if line and not line.startswith("In call to configurable")]
  return " ".join(lines) or type(error).__name__


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--verbose", action="store_true",
                      help="print the traceback of user errors too (also: "
                           f"{VERBOSE_ENV}=1).")


def _verbose(argv) -> bool:
  argv = sys.argv[1:] if argv is None else argv
  return "--verbose" in argv or os.environ.get(VERBOSE_ENV) == "1"


def entry_point(main):
  """Wraps a command's `main(argv=None)`: a user error prints one line on
  stderr and raises SystemExit(2); other exceptions propagate unchanged."""

  @functools.wraps(main)
  def wrapped(argv=None):
    _state["work_begun"] = False
    try:
      return main(argv)
    except Exception as error:  # pylint: disable=broad-except
      if not is_user_error(error):
        raise
      if _verbose(argv):
        traceback.print_exc()
      print(f"error: {one_line(error)}", file=sys.stderr)
      raise SystemExit(EXIT_USER_ERROR) from None

  return wrapped
