"""The one base of the errors a user can fix from the message alone.

A file, key, sample, model or value named in one line: the `vid2vid` CLI prints the message without
a traceback (exit 1). Each package's own error classes derive from it and from the built-in error
they are (``ValueError``, ``OSError`` ...), so callers that catch those keep working. It lives in
``dataio``, the lowest package that raises one.
"""
from __future__ import annotations


class UserInputError(Exception):
    """Bad input or an unusable resource, said in one line that names it."""


class UnusableLocationError(UserInputError, ValueError):
    """A configured location (shards, checkpoints, storage) that cannot be read or written."""
