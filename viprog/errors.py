"""Errors that end a command with a one-line message and exit status 2 (bad input)."""


class UsageError(Exception):
    """The user asked for something that cannot be done as asked; the message says what
    is wrong and what to do, on one line."""


class DataError(Exception):
    """Bad input data: the message is one line naming the file and what is wrong."""
