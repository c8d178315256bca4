"""User-facing errors: exception types whose message is safe to show as is, and the exit
status the command-line front ends give them."""

from __future__ import annotations

import sys
from typing import Callable


class InputError(ValueError):
    """Bad input from the user: the message names the file, what is wrong and what to do.

    Front ends (CLI, app, watcher) print ``str(err)`` without a traceback.
    """


class ModelError(RuntimeError):
    """A model is missing, incomplete or incompatible; the message says how to fix it."""


EXIT_USER_ERROR = 2
"""Exit status for bad input, bad settings or an unusable model (as argparse uses for usage)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""


def exit_status(action: Callable[[], int | None]) -> int:
    """Run a command-line action and turn its outcome into an exit status.

    :class:`InputError` and :class:`ModelError` become one ``error: ...`` line on stderr
    (no traceback) and :data:`EXIT_USER_ERROR`; Ctrl-C becomes :data:`EXIT_INTERRUPTED`.
    Any other exception is a bug and propagates with its traceback.
    """
    try:
        return int(action() or 0)
    except (InputError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
