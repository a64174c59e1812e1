"""The dashboard in headless Chromium (Debian's package, driven by Playwright) against a
store holding a real finished EMT campaign: every page opens, draws its figures and
tables without an error in the browser's console, the ledger sorts and filters, a
structure whose id and source hold HTML and a script shows them as text, unknown ids
give a 404 page. benchmarks/dashboard_screenshots.py uses the same store and browser."""

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import permutations
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.dft_helpers import LATTICE, campaign_document, cu3au, l12, store_crystals

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # WebGL (the 3D cell) on the CPU when there is no GPU.
                 "--enable-unsafe-swiftshader"]
HOSTILE_ID = '<script>window.hacked=1</script><img src=x onerror="window.hacked=2">'
HOSTILE_SOURCE = '<b>bold source</b><script>window.hacked=3</script>'
CAMPAIGN_BUDGET = 14  # 10 random calculations, then one model-guided batch of 4
# Generous: a CI machine running other tests beside these can be slow to serve plotly.js.
PAGE_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.slow


def build_campaign_store(folder: Path) -> str:
    """A SQLite store in ``folder`` with the 42 EMT alloys, a finished campaign on them
    (CGCNN ensembles tracked in an MLflow store beside it) and one structure whose id and
    source hold HTML; returns the store's URL."""
    from workbench.campaign.config import config_from_document
    from workbench.campaign.loop import run_campaign
    from workbench.io.entries import Entry
    from workbench.io.importer import import_entries
    from workbench.io.readers import ReadOptions
    from workbench.settings import Settings
    from workbench.store import migrate
    from workbench.store.engine import make_engine
    from workbench.structures.crystal import Crystal

    database_url = f"sqlite:///{folder / 'store.db'}"
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        store_crystals(engine, {f"{a}3{b}": l12(a, b) for a, b in permutations(LATTICE, 2)})
        settings = Settings(home=folder / "home", database_url=database_url,
                            mlflow_tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        run_campaign(engine, settings, config_from_document(campaign_document("alloys", CAMPAIGN_BUDGET)))
        atoms = cu3au()
        atoms.positions[0] += 0.05  # off its site: a crystal of its own, not one of the pool's
        import_entries(engine, [Entry(row="1", external_id=HOSTILE_ID, crystal=Crystal.from_ase(atoms))],
                       source=HOSTILE_SOURCE, file="hostile.cif", options=ReadOptions())
    finally:
        engine.dispose()
    return database_url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(database_url: str, mlflow_uri: str = "") -> Iterator[str]:
    """The dashboard on a free local port, in a thread; yields its address."""
    import uvicorn

    from workbench.dashboard.app import Dashboard, create_app
    from workbench.dashboard.queries import model_lines, registry_aliases
    from workbench.store.engine import read_only_engine

    engine = read_only_engine(database_url)

    def aliases():
        return registry_aliases(mlflow_uri, sorted({line.name for line in model_lines(engine)})) if mlflow_uri else {}

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Dashboard(engine, aliases)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


@contextmanager
def chromium() -> Iterator:
    """Headless Chromium from Debian's package (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[dict]:
    if not CHROMIUM.exists() or shutil.which("chromium") is None:
        pytest.fail("Debian's chromium package is missing: `make system-packages` installs it")
    folder = tmp_path_factory.mktemp("dashboard")
    database_url = build_campaign_store(folder)
    with serving(database_url, f"sqlite:///{folder / 'mlflow.db'}") as address, chromium() as browser:
        yield {"address": address, "browser": browser, "database_url": database_url}


@pytest.fixture
def page(site):
    """A fresh page that records console errors and uncaught exceptions."""
    page = site["browser"].new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    page.close()


def _open(page, site, path: str) -> int:
    """Open ``path``, wait until every figure is drawn; returns how many there are."""
    response = page.goto(site["address"] + path)
    assert response.status == 200, path
    page.wait_for_load_state("networkidle")
    figures = page.locator(".figure")
    # A locator, not wait_for_function: the pages' CSP forbids the eval that one needs.
    expect(page.locator(".figure:not(.drawn)")).to_have_count(0, timeout=PAGE_TIMEOUT_MS)
    assert page.errors == [], f"{path}: {page.errors}"
    return figures.count()


def _campaign_structure(site) -> int:
    from workbench.campaign.report import ledger
    from workbench.dashboard.queries import campaign_view
    from workbench.store.engine import read_only_engine

    engine = read_only_engine(site["database_url"])
    try:
        rows = ledger(engine, campaign_view(engine, "alloys").id)
    finally:
        engine.dispose()
    return next(row.structure_id for row in rows if row.function != "random")


def test_overview_models_and_search_open_with_their_tables(page, site):
    _open(page, site, "/")
    assert page.locator("#campaigns tbody tr").count() == 1
    assert page.locator("#campaigns").inner_text().count("alloys") == 1
    _open(page, site, "/models")
    assert page.locator("#models tbody tr").count() == 1
    assert "@champion" in page.locator("#models").inner_text()
    _open(page, site, "/search?elements=Cu+Au")
    assert page.locator("#structures tbody tr").count() >= 2
    assert page.locator("#candidates tbody tr").count() > 0


def test_campaign_page_draws_its_figures_and_ledger(page, site):
    assert _open(page, site, "/campaigns/alloys") == 2  # discovery curve, parity
    assert page.locator("#figure-discovery .main-svg").count() > 0
    assert page.locator("#rounds tbody tr").count() == 2
    assert page.locator("#ledger tbody tr").count() == CAMPAIGN_BUDGET
    assert "finished" in page.locator("h1").inner_text()
    assert page.locator("meta[http-equiv=refresh]").count() == 0  # only a running campaign reloads


def test_the_ledger_sorts_and_filters(page, site):
    _open(page, site, "/campaigns/alloys")
    page.locator("#ledger a.sort[data-sort=score]").click()
    page.wait_for_url("**sort=score**")
    scores = [float(text) for text in page.locator("#ledger td.score").all_inner_texts()]
    assert scores == sorted(scores)
    page.locator("#ledger a.sort[data-sort=score]").click()
    page.wait_for_url("**desc=1**")
    scores = [float(text) for text in page.locator("#ledger td.score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    page.select_option("#ledger-filters select[name=outcome]", "hit")
    page.locator("#ledger-filters button[type=submit]").click()
    page.wait_for_url("**outcome=hit**")
    outcomes = page.locator("#ledger td.outcome").all_inner_texts()
    assert outcomes and set(outcomes) == {"hit"}
    assert page.errors == []


def test_structure_page_draws_the_cell_and_lists_calculations(page, site):
    structure_id = _campaign_structure(site)
    assert _open(page, site, f"/structures/{structure_id}") >= 1
    assert page.locator("#figure-cell .gl-container, #figure-cell canvas").count() > 0
    assert page.locator("#labels tbody tr").count() > 0
    assert page.locator("#predictions tbody tr").count() > 0
    assert page.locator("details.calculation").count() == 1


def test_html_in_imported_strings_is_shown_as_text(page, site):
    from workbench.dashboard.queries import search_structures
    from workbench.store.engine import read_only_engine

    engine = read_only_engine(site["database_url"])
    try:
        [found] = search_structures(engine, source=HOSTILE_SOURCE).rows
    finally:
        engine.dispose()
    _open(page, site, f"/structures/{found.id}")
    assert page.locator("#sources td.external-id").inner_text() == HOSTILE_ID
    assert page.locator("#sources td.source").inner_text() == HOSTILE_SOURCE
    assert page.evaluate("window.hacked") is None


def test_unknown_ids_give_a_404_page(page, site):
    for path in ("/structures/987654321", "/campaigns/nonesuch", "/models/987654321"):
        response = page.goto(site["address"] + path)
        assert response.status == 404, path
        assert page.locator("h1").inner_text() == "Not found"
