"""Errors a user can act on: each names the file, the row and the field at fault.

Every error of the project derives from :class:`WorkbenchError`; the command line prints
its message (no traceback) and exits with its ``exit_code``.
"""


class WorkbenchError(Exception):
    """An error whose message tells a user what to change."""

    exit_code = 1


class NotFound(WorkbenchError, LookupError):
    """A named thing (campaign, model version, calculation, store) is not there."""


class InputError(WorkbenchError, ValueError):
    """Bad input, located as precisely as the reader knows (file, row, field)."""

    def __init__(
        self, message: str, *, file: str | None = None, row: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.row = row
        self.field = field

    def located(self, *, file: str | None = None, row: str | None = None) -> "InputError":
        """The same error with the file and row filled in where they were unknown."""
        return type(self)(
            self.message, file=self.file or file, row=self.row or row, field=self.field
        )

    def __str__(self) -> str:
        where = [part for part in (self.file, self.row) if part]
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def __reduce__(self):
        # Keeps the location when the error crosses a process boundary.
        return (_rebuild, (type(self), self.message, self.file, self.row, self.field))


def _rebuild(kind, message, file, row, field) -> InputError:
    return kind(message, file=file, row=row, field=field)


class ImportFailed(WorkbenchError):
    """A file was not imported; nothing of it was written. ``errors`` lists every reason."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {error}" for error in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{len(errors)} bad entr{'y' if len(errors) == 1 else 'ies'}:\n{lines}{more}")

    def __reduce__(self):
        # Rebuilt from its errors, not from the message (which __init__ would read as a list).
        return (type(self), (self.errors,))


class ReadOnlyViolation(InputError):
    """A user's SQL tried to write through a read-only connection, or held more than one
    statement."""


class OutputExists(WorkbenchError, FileExistsError):
    """A file would be overwritten without the user asking for it."""
