"""Screenshots of the dashboard for docs/dashboard.md, taken in headless Chromium.

    .venv/bin/python benchmarks/dashboard_screenshots.py --out docs/dashboard

The store is the one the browser tests use (tests/test_dashboard_browser.py): the 42 EMT
alloys and a real finished campaign on them (10 random calculations, then a round
guided by a CGCNN ensemble), built in a temporary folder; the dashboard serves it on a
free local port and Debian's chromium, driven by Playwright, saves the overview, the
campaign page and the structure page of the first model-chosen candidate.
"""

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect

from tests.test_dashboard_browser import build_campaign_store, chromium, serving
from workbench.campaign.report import ledger
from workbench.dashboard.queries import campaign_view
from workbench.store.engine import read_only_engine

VIEWPORT = {"width": 1400, "height": 1000}


def first_guided_structure(database_url: str) -> int:
    engine = read_only_engine(database_url)
    try:
        rows = ledger(engine, campaign_view(engine, "alloys").id)
    finally:
        engine.dispose()
    return next(row.structure_id for row in rows if row.function != "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard")
    parser.add_argument("--store", type=Path, help="a folder where this script (or build_campaign_store) "
                        "built the store before; default: build one in a temporary folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.store or Path(scratch)
        database_url = (f"sqlite:///{folder / 'store.db'}" if args.store
                        else build_campaign_store(folder))
        pages = {"overview": "/", "campaign": "/campaigns/alloys",
                 "structure": f"/structures/{first_guided_structure(database_url)}"}
        with serving(database_url, f"sqlite:///{folder / 'mlflow.db'}") as address, chromium() as browser:
            page = browser.new_page(viewport=VIEWPORT)
            for name, path in pages.items():
                page.goto(address + path)
                expect(page.locator(".figure:not(.drawn)")).to_have_count(0, timeout=60_000)
                page.wait_for_timeout(500)  # plotly's transitions
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
