"""Where and when a figure was made: the line every report and benchmark writes about itself.

Light on purpose (standard library only; torch and CUDA are looked up only if already
imported), so that a report can call it without slowing the command line.
"""

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SOURCE = Path(__file__).resolve().parent


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def source_commit(path: Path = SOURCE) -> str:
    """The short commit of the checkout ``path`` is in, with ``+changes`` when the package's
    files differ from it; the package version when it is not in a git checkout."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(path), "--no-optional-locks", *args],
                                capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"workbench {version('workbench')} (not a git checkout)"
        except PackageNotFoundError:
            return "unknown"
    return f"{commit}+changes" if git("status", "--porcelain", "--", str(path)) else commit


def accelerator() -> str:
    """The GPU torch would use, or ``no GPU`` (torch is only asked if already imported)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "no GPU" if torch is not None else "GPU not checked"


@dataclass(frozen=True)
class Provenance:
    """The machine, software and time a result was produced on."""

    written_at: datetime
    cores: int
    cpu: str
    accelerator: str
    python: str
    commit: str

    def line(self, *, wall_seconds: float | None = None) -> str:
        wall = "" if wall_seconds is None else f"; wall time {format_duration(wall_seconds)}"
        return (f"Written {self.written_at:%Y-%m-%d %H:%M} UTC on {self.cores} cores ({self.cpu}), "
                f"{self.accelerator}; Python {self.python}; workbench commit {self.commit}{wall}.")


def current() -> Provenance:
    return Provenance(written_at=datetime.now(UTC), cores=os.cpu_count() or 0, cpu=cpu_model(),
                      accelerator=accelerator(), python=platform.python_version(), commit=source_commit())


def format_duration(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minute} min"
    return f"{minute} min {second} s" if minute else f"{second} s"
