"""User-facing errors: one exception type whose message is safe to show as is."""


class InputError(ValueError):
    """Bad input from the user: the message names the file, what is wrong and what to do.

    Front ends (CLI, app, watcher) print ``str(err)`` without a traceback.
    """


class ModelError(RuntimeError):
    """A model is missing, incomplete or incompatible; the message says how to fix it."""
