"""Errors a user can cause (bad settings, bad data, a run dir of another run, a diverged run).

The command-line entry points print these as one line (``error: ...``) and exit with status 2;
``HYDRA_FULL_ERROR=1`` shows the traceback. Each message names the setting, file or step and
what was expected.
"""
from __future__ import annotations


class UserError(ValueError):
    """Base class: the input, not the program, is at fault."""


class ConfigError(UserError):
    """A setting outside its valid range (names the key and the range)."""


class NonFiniteError(UserError):
    """Training produced a non-finite loss or gradient (names the step and likely causes)."""


class CheckpointError(UserError):
    """Checkpoints that cannot be used: unreadable, or written by another model/config."""


def check(condition: bool, key: str, value, expected: str) -> None:
    """Raises ``ConfigError("key=value: expected ...")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


def exit_for_user_error(error: BaseException):
    """For command-line entry points, inside ``except``: print ``error: <message>`` on one line
    and exit with status 2 (``HYDRA_FULL_ERROR=1`` re-raises it with its traceback instead)."""
    import os
    import sys

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    print(f"error: {message.strip()}", file=sys.stderr, flush=True)
    sys.exit(2)
