"""How far an ensemble's training has come, and how long it may still take (free of torch)."""

import time
from dataclasses import dataclass, field


@dataclass
class EnsembleProgress:
    """Epochs run across the members, fed by ``train_ensemble``'s ``on_epoch`` and
    ``on_member`` callbacks.

    The total counts every member's most epochs until it stops (early stopping then
    removes its unused ones), so that :meth:`seconds_left` (wall seconds per epoch so far,
    members in parallel included, times the epochs left) is an upper bound that tightens
    as members stop.
    """

    members: int
    epochs: int
    started: float = field(default_factory=time.monotonic)
    done: list[int] = field(init=False)
    budget: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.done = [0] * self.members
        self.budget = [self.epochs] * self.members

    def epoch(self, member: int, epoch: int) -> None:
        self.done[member] = epoch + 1

    def finished(self, member: int, epochs_run: int) -> None:
        self.done[member] = self.budget[member] = epochs_run

    @property
    def completed(self) -> int:
        return sum(self.done)

    @property
    def total(self) -> int:
        return sum(self.budget)

    def seconds_left(self) -> float | None:
        """None until an epoch has run."""
        if not self.completed:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.completed * (self.total - self.completed)

    def describe_left(self) -> str:
        seconds = self.seconds_left()
        if seconds is None:
            return "time left: estimating"
        minutes, seconds = divmod(round(seconds), 60)
        return f"at most {minutes} min {seconds:02d} s left" if minutes else f"at most {seconds} s left"
