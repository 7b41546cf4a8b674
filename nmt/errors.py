"""The one exception type for mistakes a user can fix.

Commands catch :class:`NmtError` and print its message on one line with exit code 2;
anything else is a bug in nmt and keeps its traceback.
"""


class NmtError(Exception):
    """A user-facing error: the message names the file, line or recipe key at fault."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (a final checkpoint) but reported with exit code 143."""
