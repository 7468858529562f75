"""Errors that cmrec raises for bad input or configuration.

Every user-facing failure is a `CmrecError`: the command-line entry point prints its message and exits
non-zero, without a traceback. Messages name the file, the column and the row where they can.
"""

from __future__ import annotations


class CmrecError(Exception):
    """Base class of the errors a user can act on (bad input, bad configuration)."""


class DataValidationError(CmrecError, ValueError):
    """An input file breaks the schema; the message names the file, column and row."""


class ConfigError(CmrecError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class DataWarning(UserWarning):
    """Input that is probably a mistake but can be used (e.g. duplicated rows); the command line
    prints it as one line, the library leaves it to Python's warnings filters."""
