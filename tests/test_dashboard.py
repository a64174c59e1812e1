"""The dashboard's queries and pages on SQLite and PostgreSQL: a store holding a small
campaign's ledger, two model versions' predictions, a DFT calculation whose first attempt
failed, spectra and per-site labels; read through an engine the database refuses writes
through. HTTP through Starlette's TestClient; the browser tests are in
test_dashboard_browser.py."""

import json
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from tests.dft_helpers import campaign_document, cu3au
from workbench.campaign.config import config_from_document
from workbench.campaign.loop import open_campaign
from workbench.dashboard import queries
from workbench.dashboard.app import Dashboard, create_app
from workbench.errors import InputError, NotFound
from workbench.io.entries import Entry
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.store.engine import SQLITE_BUSY_TIMEOUT_MS, read_only_engine, session_scope
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    LineageKind,
    ModelVersion,
    Prediction,
    Round,
    RoundKind,
    StructureLineage,
    TargetDefinition,
    TargetKind,
    TargetValue,
)
from workbench.structures.crystal import Crystal

TARGET = "emt.energy_per_atom"
THRESHOLD = 0.1
HOSTILE = '<script>alert("x")</script><b>bold</b>'


def _seed(engine, alloys: dict[str, int], workdir) -> dict:
    """A finished two-round campaign on the alloys, with what the pages show."""
    campaign_id = open_campaign(engine, config_from_document(campaign_document(
        "alloys", 7, objective=[f"{TARGET}<={THRESHOLD}"])))
    ids = sorted(alloys.values())
    random_ids, guided_ids = ids[:4], ids[4:7]
    computed = {structure_id: 0.05 * n for n, structure_id in enumerate(random_ids + guided_ids)}
    (workdir / "stderr.log").write_text("SCF did not converge <b>here</b>\n")
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        scalar = TargetDefinition(name=TARGET, kind=TargetKind.SCALAR, units="eV/atom")
        dos = TargetDefinition(name="dos", kind=TargetKind.SPECTRUM, units="states/eV", length=5,
                               grid=np.linspace(-2, 2, 5), grid_units="eV")
        charges = TargetDefinition(name="charges", kind=TargetKind.PER_SITE, units="e", site_shape=[])
        session.add_all([scalar, dos, charges])
        session.flush()
        old = ModelVersion(name=f"alloys-{TARGET}", registry_version=1, mlflow_run_id="run1", targets=[TARGET],
                           architecture="cgcnn", metrics={"mae": 0.2})
        new = ModelVersion(name=f"alloys-{TARGET}", registry_version=2, mlflow_run_id="run2", targets=[TARGET],
                           architecture="cgcnn", metrics={"mae": 0.1, "rmse": 0.15})
        session.add_all([old, new])
        session.flush()
        for n, structure_id in enumerate(ids):
            session.add(Prediction(model_version_id=old.id, structure_id=structure_id, target_id=scalar.id,
                                   mean=0.3, std=0.01 * n))
        for n, structure_id in enumerate(ids[:30]):
            session.add(Prediction(model_version_id=new.id, structure_id=structure_id, target_id=scalar.id,
                                   mean=0.01 * n, std=0.5 - 0.01 * n))
        first = ids[0]
        calculation = Calculation(structure_id=first, preset="emt", parameters={}, status=CalculationStatus.DONE,
                                  wall_time_s=1.5, results={"energy": -1.0}, finished_at=now)
        session.add(calculation)
        session.flush()
        session.add_all([
            CalculationAttempt(calculation_id=calculation.id, number=1, parameters={}, reason="scf",
                               status=CalculationStatus.FAILED, message="SCF <i>failed</i>", workdir=str(workdir),
                               finished_at=now),
            CalculationAttempt(calculation_id=calculation.id, number=2, parameters={},
                               status=CalculationStatus.DONE, finished_at=now),
        ])
        for structure_id, value in computed.items():
            session.add(TargetValue(structure_id=structure_id, target_id=scalar.id, value=value,
                                    calculation_id=calculation.id if structure_id == first else None))
        session.add(TargetValue(structure_id=first, target_id=dos.id, value_array=np.arange(5.0)))
        session.add(TargetValue(structure_id=first, target_id=charges.id, value_array=np.array([1.0, -1, 0.5, -0.5])))
        session.add(Prediction(model_version_id=new.id, structure_id=first, target_id=dos.id,
                               mean_array=np.arange(5.0) + 0.5, std_array=np.full(5, 0.2)))
        random_round = Round(campaign_id=campaign_id, number=0, kind=RoundKind.RANDOM, status="done",
                             summary={"acquired": 4, "hits": 3, "failed": 0, "dft_seconds": 12.34}, finished_at=now)
        guided = Round(campaign_id=campaign_id, number=1, kind=RoundKind.MODEL, status="done",
                       model_version_id=old.id, models={TARGET: old.id}, summary={"acquired": 3}, finished_at=now)
        session.add_all([random_round, guided])
        session.flush()
        for batch, structure_id in enumerate(random_ids, start=1):
            session.add(Acquisition(
                round_id=random_round.id, structure_id=structure_id, acquisition_function="random", score=0.0,
                rank=batch, batch=batch, status=AcquisitionStatus.LABELED,
                outcome={"computed": {TARGET: computed[structure_id]}, "hit": computed[structure_id] <= THRESHOLD}))
        for batch, structure_id in enumerate(guided_ids, start=1):
            labeled = batch < 3  # the last one is still being computed
            session.add(Acquisition(
                round_id=guided.id, structure_id=structure_id, model_version_id=old.id,
                acquisition_function="probability", score=1.0 - 0.2 * batch, rank=batch, batch=batch,
                status=AcquisitionStatus.LABELED if labeled else AcquisitionStatus.DISPATCHED,
                predicted={TARGET: {"mean": 0.3, "std": 0.01 * batch}},
                outcome={"computed": {TARGET: computed[structure_id]}, "hit": computed[structure_id] <= THRESHOLD}
                if labeled else None))
    return {"campaign_id": campaign_id, "first": first, "ids": ids, "old": old.id, "new": new.id,
            "labeled": set(computed)}


@pytest.fixture
def store(engine, alloys, tmp_path, database_url):
    seeded = _seed(engine, alloys, tmp_path)
    reader = read_only_engine(database_url)
    yield {**seeded, "engine": reader, "alloys": alloys}
    reader.dispose()


def test_the_read_only_engine_refuses_writes(store):
    with pytest.raises(DBAPIError, match="(?i)read-?only"), store["engine"].begin() as connection:
        connection.execute(text("DELETE FROM structures"))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_dashboard_reads_through_the_stores_read_only_engine(store):
    """One read-only engine for the dashboard and `workbench sql`: ATTACH, which could open
    another file read-write, is refused here too, and a writer is waited for."""
    with store["engine"].connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
        with pytest.raises(DBAPIError, match="too many attached"):
            connection.exec_driver_sql("ATTACH DATABASE ':memory:' AS other")


def test_overview_counts_campaigns_queue_and_failures(store):
    overview = queries.overview(store["engine"])
    assert (overview.structures, overview.labels, overview.model_versions) == (42, 9, 2)
    assert overview.predictions == 42 + 30 + 1
    [line] = overview.campaigns
    assert (line.name, line.spent, line.budget, line.hits, line.rounds) == ("alloys", 7, 7, 3, 2)
    assert overview.dft_queue["done"] == 1 and overview.dft_queue["queued"] == 0
    assert overview.failures_by_reason == {"scf": 1}
    assert [f.reason for f in overview.recent_failures] == ["scf"]


def test_campaign_view_names_rounds_and_their_models(store):
    view = queries.campaign_view(store["engine"], "alloys")
    assert (view.spent, view.budget, view.hits, view.targets) == (7, 7, 3, [TARGET])
    assert [(r.number, r.kind) for r in view.rounds] == [(0, "random"), (1, "model")]
    assert view.rounds[1].models[TARGET].label == f"alloys-{TARGET}/1"
    with pytest.raises(NotFound):
        queries.campaign_view(store["engine"], "nonesuch")


def test_ledger_sorts_filters_and_pages_in_sql(store):
    engine = store["engine"]
    view = queries.campaign_view(engine, "alloys")

    def page(**query):
        return queries.ledger_page(engine, view, queries.LedgerQuery(**query))

    assert [row.score for row in page(sort="score", descending=True).rows] == pytest.approx([0.8, 0.6, 0.4, 0, 0, 0, 0])
    by_std = page(sort="std", descending=True).rows
    assert [row.predicted[TARGET]["std"] for row in by_std[:3]] == pytest.approx([0.03, 0.02, 0.01])
    assert all(not row.predicted for row in by_std[3:])  # rows without a prediction come last
    by_computed = [row.outcome["computed"][TARGET] for row in page(sort="computed").rows[:6]]
    assert by_computed == sorted(by_computed)
    assert page(sort="computed").rows[-1].status == "dispatched"  # not computed: last
    hits = page(outcome="hit")
    assert hits.total == 3 and all(row.outcome["hit"] for row in hits.rows)
    assert page(outcome="miss").total == 3
    assert [row.status for row in page(outcome="pending").rows] == ["dispatched"]
    assert page(status="dispatched").total == 1 and page(round=1).total == 3
    formula = page().rows[0].formula
    matching = page(formula=formula.lower())
    assert matching.total >= 1 and all(row.formula == formula for row in matching.rows)
    second = page(page=2, per_page=3)
    assert (second.total, second.pages, [row.round for row in second.rows]) == (7, 3, [0, 1, 1])
    # The page holds the rows of the report's ledger.
    from workbench.campaign.report import ledger

    assert page(per_page=100).rows == ledger(engine, store["campaign_id"])
    points = queries.ledger_points(engine, view)
    assert points.hits == [row.outcome.get("hit", False) for row in page(per_page=100).rows]
    assert points.targets[TARGET].mean[:4] == [None] * 4 and points.targets[TARGET].computed[-1] is None
    with pytest.raises(InputError, match="sort the ledger by 'bogus'"):
        queries.LedgerQuery(sort="bogus")
    with pytest.raises(InputError, match="no column for target 'other'"):
        page(target="other")


def test_structure_view_has_labels_predictions_spectra_attempts_and_lineage(engine, store):
    parent, child = store["ids"][1], store["first"]
    with session_scope(engine) as session:
        session.add(StructureLineage(structure_id=child, parent_id=parent, kind=LineageKind.SUBSTITUTION,
                                     detail={"Cu": "Au"}))
    view = queries.structure_view(store["engine"], store["first"])
    assert [(link.direction, link.structure_id, link.kind, link.detail) for link in view.lineage] == [
        ("parent", parent, "substitution", {"Cu": "Au"})]
    assert [(link.direction, link.structure_id) for link in queries.structure_view(
        store["engine"], parent).lineage] == [("child", child)]
    assert {label.target for label in view.labels} == {TARGET, "dos", "charges"}
    assert [(p.model.label, p.target) for p in view.predictions if p.target == TARGET] == [
        (f"alloys-{TARGET}/2", TARGET), (f"alloys-{TARGET}/1", TARGET)]
    assert view.grids["dos"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert len(view.cartesian) == view.nsites == 4
    [calculation] = view.calculations
    assert [a.reason for a in calculation.attempts] == ["scf", None]
    assert "SCF did not converge" in calculation.attempts[0].logs["stderr.log"]
    with pytest.raises(NotFound):
        queries.structure_view(store["engine"], 10**9)


def test_search_by_formula_elements_and_source(store):
    engine = store["engine"]
    found = queries.search_structures(engine, elements="Cu Au")
    assert sorted(line.reduced_formula for line in found.rows) == ["Cu3Au", "CuAu3"]
    assert {line.reduced_formula for line in queries.search_structures(engine, formula="Cu3").rows} >= {"Cu3Au"}
    assert queries.search_structures(engine, source="nonesuch").rows == []
    first = queries.search_structures(engine, source="test", per_page=40)
    assert len(first.rows) == 40 and first.has_next
    rest = queries.search_structures(engine, source="test", page=2, per_page=40)
    assert len(rest.rows) == 2 and not rest.has_next


def test_candidates_rank_the_newest_unlabeled_predictions(store):
    ranked = queries.candidates(store["engine"], TARGET, order="std", descending=True, per_page=100)
    ids = [line.structure_id for line in ranked.rows]
    assert not set(ids) & store["labeled"] and len(ids) == 42 - 7
    newest = {line.structure_id: line.model.id for line in ranked.rows}
    assert all(newest[i] == store["new"] for i in store["ids"][7:30])
    assert all(newest[i] == store["old"] for i in store["ids"][30:])
    stds = [line.std for line in ranked.rows]
    assert stds == sorted(stds, reverse=True)
    assert queries.scalar_targets(store["engine"]) == [TARGET]
    with pytest.raises(InputError):
        queries.candidates(store["engine"], TARGET, order="score")


def test_models_and_their_parity(store):
    lines = queries.model_lines(store["engine"])
    assert [(line.version, line.metrics.get("rmse")) for line in lines] == [(2, 0.15), (1, None)]
    named = queries.with_aliases(lines, {f"alloys-{TARGET}": {"champion": 2, "challenger": 2}})
    assert named[0].aliases == ["challenger", "champion"] and named[1].aliases == []
    [points] = queries.model_parity(store["engine"], store["old"])
    assert points.target == TARGET and len(points.computed) == 7


def test_a_stability_campaign_draws_the_hulls_of_its_systems(engine, store):
    from ase.build import bulk

    from tests.dft_helpers import store_crystals

    ids = store_crystals(engine, {"Cu": bulk("Cu", "fcc", a=3.61), "Au": bulk("Au", "fcc", a=4.08)})
    energies = {ids["Cu"]: 0.0, ids["Au"]: 0.0, ids["Cu3Au"]: -0.1, ids["Au3Cu"]: 0.05}
    campaign_id = open_campaign(engine, config_from_document(campaign_document(
        "stable", 4, objective=["hull.e_above_hull<=0.01"])))
    with session_scope(engine) as session:
        level = TargetDefinition(name="hull.energy_per_atom", kind=TargetKind.SCALAR, units="eV/atom")
        session.add(level)
        session.flush()
        session.add_all([TargetValue(structure_id=i, target_id=level.id, value=v) for i, v in energies.items()])
        round_row = Round(campaign_id=campaign_id, number=0, kind=RoundKind.RANDOM, status="done")
        session.add(round_row)
        session.flush()
        session.add(Acquisition(round_id=round_row.id, structure_id=ids["Cu3Au"], acquisition_function="random",
                                score=0.5, rank=1, batch=1, status=AcquisitionStatus.DISPATCHED))
    view = queries.campaign_view(store["engine"], "stable")
    [system] = queries.campaign_hulls(store["engine"], view, [ids["Cu3Au"]])
    points = {int(key): (x, y, above, chosen) for key, x, y, above, chosen in zip(
        system.keys, system.fraction, system.formation_energy, system.e_above_hull, system.chosen, strict=True)}
    assert system.system == "Au-Cu" and set(points) == set(energies)
    assert points[ids["Cu3Au"]] == pytest.approx((0.75, -0.1, 0.0, True))
    # above the line from Au (0, 0) to Cu3Au (0.75, -0.1), which passes -0.1/3 at x = 0.25
    assert points[ids["Au3Cu"]][2] == pytest.approx(0.05 + 0.1 / 3) and not points[ids["Au3Cu"]][3]
    assert queries.campaign_hulls(store["engine"], queries.campaign_view(store["engine"], "alloys"), []) == []
    page = TestClient(create_app(Dashboard(store["engine"]))).get("/campaigns/stable")
    assert page.status_code == 200 and 'id="figure-hull-Au-Cu"' in page.text


# -- HTTP -------------------------------------------------------------------------------

@pytest.fixture
def client(store):
    return TestClient(create_app(Dashboard(store["engine"])))


def test_every_page_answers(client, store):
    pages = {"/": "alloys", "/campaigns/alloys": "Ledger", f"/structures/{store['first']}": "Calculation",
             "/models": f"alloys-{TARGET}/2", f"/models/{store['old']}": "Parity",
             "/search?elements=Cu+Au": "Cu3Au", f"/search?target={TARGET}&order=mean&desc=0": "Candidates"}
    for path, expected in pages.items():
        response = client.get(path)
        assert response.status_code == 200, path
        assert expected in response.text, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
    # The campaign is still active: its page reloads itself.
    assert '<meta http-equiv="refresh" content="15">' in client.get("/campaigns/alloys").text
    assert client.get("/static/plotly.min.js").status_code == 200
    assert client.get("/static/dashboard.js").status_code == 200


def test_the_rounds_table_shows_what_each_round_counted(client):
    rounds = client.get("/campaigns/alloys").text.split('<table id="rounds">')[1].split("</table>")[0]
    assert '<th class="n">acquired</th>' in rounds and '<th class="n">DFT s</th>' in rounds
    assert '<td class="n">4</td>' in rounds and '<td class="n">12.3</td>' in rounds


def test_the_dashboard_loads_without_the_training_and_dft_stack():
    """Serving read-only pages needs neither torch nor the campaign loop (and the DFT runner)."""
    stack = ["torch", "mlflow", "matplotlib", "workbench.campaign.loop", "workbench.dft.runner"]
    script = f"import json, sys, workbench.dashboard.app; print(json.dumps([m for m in {stack!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_ledger_is_sorted_and_filtered_by_the_server(client):
    page = client.get("/campaigns/alloys", params={"sort": "score", "desc": "1", "per_page": "2"}).text
    assert page.count('class="n score"') == 2 and "0.8" in page and "page 1 of 4" in page
    hits = client.get("/campaigns/alloys", params={"outcome": "hit"}).text
    assert "3 rows" in hits and "miss" not in hits.split('id="ledger"')[1]
    assert client.get("/campaigns/alloys", params={"sort": "bogus"}).status_code == 400
    assert client.get("/campaigns/alloys", params={"page": "x"}).status_code == 400


def test_a_page_below_one_is_a_bad_request(client):
    """Not a negative OFFSET, which PostgreSQL refuses with a server error."""
    for path, name in (("/search?elements=Cu&page=0", "page"), (f"/search?target={TARGET}&cpage=-3", "cpage")):
        response = client.get(path)
        assert response.status_code == 400, path
        assert f"{name} must be 1 or more" in response.text, path


def test_unknown_ids_give_a_404_page(client):
    for path in ("/structures/999999999", "/campaigns/nonesuch", "/models/99999", "/no/such/page"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "Not found" in response.text


def test_strings_from_imported_files_are_escaped(engine, store, client):
    entry = Entry(row="1", external_id=HOSTILE, crystal=Crystal.from_ase(cu3au()))
    import_entries(engine, [entry], source=HOSTILE, file=HOSTILE, options=ReadOptions())
    [found] = queries.search_structures(store["engine"], source=HOSTILE).rows
    for path in (f"/structures/{found.id}", f"/search?source={HOSTILE}"):
        page = client.get(path).text
        assert HOSTILE not in page and "<script>alert" not in page, path
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page, path


def test_a_token_guards_every_request(store):
    guarded = TestClient(create_app(Dashboard(store["engine"]), token="s3cret"))
    assert guarded.get("/").status_code == 401
    assert guarded.get("/static/dashboard.js").status_code == 401
    assert guarded.get("/", headers={"X-Workbench-Token": "wrong"}).status_code == 401
    assert guarded.get("/", headers={"X-Workbench-Token": "s3cret"}).status_code == 200
    assert guarded.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert guarded.get("/?token=s3cret").status_code == 200
    assert guarded.get("/models").status_code == 200  # the cookie set by ?token=


def test_serve_refuses_a_public_address_without_a_token(run_cli, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DASHBOARD_TOKEN", raising=False)
    result = run_cli("serve", "--host", "0.0.0.0", expect=1)
    assert "WORKBENCH_DASHBOARD_TOKEN" in result.output
