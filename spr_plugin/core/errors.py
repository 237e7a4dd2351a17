"""User-facing errors.

An :class:`SPRError` is a problem with the user's input or setup (a missing file, a malformed
annotation json, an entry that already exists). The CLI prints its message, without a traceback,
and exits with status 2; anything else is a bug and keeps its traceback.
"""


class SPRError(Exception):
    """A problem the user can fix; the message says which file or record and what to do."""


class ConfigError(SPRError, ValueError):
    """An invalid setting (a ValueError too, so library callers can catch either)."""


class PartialBatchError(SPRError):
    """A generator failed part way through a batch. ``results`` holds, per prompt, the texts of the prompts
    that finished (``None`` for the others), so the caller can keep them before reporting the failure."""

    def __init__(self, message: str, results: list[list[str] | None]) -> None:
        super().__init__(message)
        self.results = results
