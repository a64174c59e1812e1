"""Errors a user can act on: each names the file, the row and the field at fault."""


class InputError(ValueError):
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
        return InputError(
            self.message, file=self.file or file, row=self.row or row, field=self.field
        )

    def __str__(self) -> str:
        where = [part for part in (self.file, self.row) if part]
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def __reduce__(self):
        # Keeps the location when the error crosses a process boundary.
        return (_rebuild, (self.message, self.file, self.row, self.field))


def _rebuild(message, file, row, field) -> InputError:
    return InputError(message, file=file, row=row, field=field)


class ImportFailed(Exception):
    """A file was not imported; nothing of it was written. ``errors`` lists every reason."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {error}" for error in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{len(errors)} bad entr{'y' if len(errors) == 1 else 'ies'}:\n{lines}{more}")


class ReadOnlyViolation(Exception):
    """A statement tried to write through a read-only connection."""
