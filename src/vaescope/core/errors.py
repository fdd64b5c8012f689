"""The one exception type a user sees.

Every error that a user can fix (bad data, bad option, unwritable place) is raised as a
:class:`VaescopeError` whose message is one line naming the thing and the fix. The CLI prints
that line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VaescopeError(Exception):
    """A user-facing error: one line that names the file or option and says how to fix it."""
