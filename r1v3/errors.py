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


def plugin_failed(e: BaseException) -> bool:
    """Whether `e`, raised by user code (a custom reward, a model's own code), is that code's failure
    rather than the end of the process: any exception, SystemExit (sys.exit() or exit() in a plug-in)
    and any other BaseException of its own. A KeyboardInterrupt stays an interrupt (Ctrl-C)."""
    return not isinstance(e, (KeyboardInterrupt, GeneratorExit))


def error_text(e: BaseException) -> str:
    """`e` as part of one line: its type and its text, cut to 200 characters."""
    if isinstance(e, SystemExit):  # its text is the bare code ("0"), which says nothing
        return " ".join(f"SystemExit({e.code!r})".split())[:200]
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
