"""What ships: the wheel carries the migrations; the Dockerfile copies what exists."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_copies_existing_paths_and_runs_the_cli():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE):
        for source in sources.split():
            assert (REPO / source).exists(), source
    assert 'ENTRYPOINT ["workbench"]' in dockerfile
    assert 'workbench = "workbench.cli:app"' in (REPO / "pyproject.toml").read_text()


@pytest.mark.slow
def test_wheel_carries_migrations(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True)
    [wheel] = tmp_path.glob("workbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "workbench/_migrations/env.py" in names
    assert any(name.startswith("workbench/_migrations/versions/0001") for name in names)
    assert "workbench/examples/perovskites_labeled.csv.gz" in names
    assert {"flows/campaign.py", "flows/tasks.py", "flows/prefect.yaml"} <= set(names)  # python -m flows.campaign
