"""Errors that mean the user asked for something we cannot do, as opposed to a bug.

The CLI prints these as one line (`error: ...`) without a traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: a config key, a task name, a file, a missing extra."""


def missing_extra(module: str, extra: str) -> UserError:
    return UserError(f"the '{module}' package is not installed; install it with: pip install 'torch_dreamer[{extra}]'")
