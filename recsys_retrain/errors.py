"""Errors a user can act on.

Every exception here carries one line that names what is wrong (the file, the
column, the window); the CLI prints that line alone and exits non-zero.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class DataError(PipelineError):
    """Missing, unreadable or malformed interaction data."""


class ValidationError(DataError):
    """A window has more bad rows than the configured share allows."""


class RegistryError(PipelineError):
    """The model registry is unreachable or in an unexpected state."""
