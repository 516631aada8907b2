"""The one exception type for mistakes a user can make (bad input, missing artifact, ...).

The CLI prints it as a single `error: ...` line and exits 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: message says what is wrong and where (file, row, key)."""


class NothingKept(UserError):
    """The stage ran and every candidate failed its filter (distill: no trace verified), so there is
    nothing to publish. Its own exit code (3) lets a recipe fall back without reading the message."""

    exit_code = 3
