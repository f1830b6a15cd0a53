"""The one error type for mistakes a user can fix.

Every error caused by the user's input (a bad config key or value, a missing or unreadable input
file, a bad checkpoint, a malformed annotation json, a bad combination of command-line
arguments) is a :class:`DiscoboxError`. The ``discobox`` command prints its message as one line
and exits with status 2; any other exception is a bug and keeps its traceback. Subclasses also
derive from the built-in exception that callers caught before (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so ``except ValueError`` keeps working.

This module imports nothing from discobox: every layer may raise these.
"""

from __future__ import annotations


class DiscoboxError(Exception):
    """A mistake the user can fix; the message is one line naming the file, key or argument."""


class MissingFileError(DiscoboxError, FileNotFoundError):
    """A required input file or folder does not exist; the message names the path."""


class InvalidInputError(DiscoboxError, ValueError):
    """An input file's content or an argument is malformed; the message names the file or
    argument and what is wrong."""


class CheckpointError(DiscoboxError, RuntimeError):
    """A checkpoint cannot be read or holds no usable model; the message names the file."""


class ConfigError(DiscoboxError, ValueError):
    """A bad config file, key or value; the message names the key and the file."""
