"""The one exception type for mistakes a user can make (bad input, missing artifact, ...).

The CLI prints it as a single `error: ...` line and exits 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: message says what is wrong and where (file, row, key)."""
