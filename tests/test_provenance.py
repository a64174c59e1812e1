"""The line every report writes about itself."""

import subprocess
from datetime import UTC, datetime

from workbench.provenance import Provenance, format_duration, source_commit


def test_source_commit_names_the_checkout_or_says_it_is_not_one(tmp_path):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    commit = source_commit()
    assert commit.startswith(head) if head else "not a git checkout" in commit
    assert "not a git checkout" in source_commit(tmp_path) or source_commit(tmp_path) == "unknown"


def test_the_line_names_machine_commit_and_wall_time():
    provenance = Provenance(datetime(2026, 12, 1, 20, 5, tzinfo=UTC), 2, "AMD EPYC", "no GPU", "3.11.7", "abc1234")
    assert provenance.line(wall_seconds=3725) == (
        "Written 2026-12-01 20:05 UTC on 2 cores (AMD EPYC), no GPU; Python 3.11.7; "
        "workbench commit abc1234; wall time 1 h 2 min.")
    assert format_duration(59.6) == "1 min 0 s" and format_duration(7) == "7 s"
