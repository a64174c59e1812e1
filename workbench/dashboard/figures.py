"""Plotly figures as plain JSON (``{"data": [...], "layout": {...}}``), drawn in the page
by the locally served plotly.js. Text that came from the store is HTML-escaped: Plotly
renders a subset of HTML in labels and hover text."""

from html import escape

import numpy as np

from workbench.acquire.scores import RANDOM
from workbench.campaign.store import calculations_spent
from workbench.dashboard.queries import HullSystem, LedgerPoints, ParityPoints, StructureView

# A phase this close to the hull (eV/atom) is drawn on it.
HULL_TOLERANCE = 1e-6
LAYOUT = {"margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 380, "template": "plotly_white"}


def _figure(data: list[dict], **layout) -> dict:
    return {"data": data, "layout": {**LAYOUT, **layout}}


def discovery(points: LedgerPoints, title: str) -> dict:
    """Hits against calculations spent, beside the hit rate of the random rounds."""
    spent = calculations_spent(points.calculation_ids)
    data = [{"type": "scatter", "x": spent, "y": np.cumsum(points.hits).tolist(), "mode": "lines",
             "line": {"shape": "hv", "width": 3}, "name": "campaign", "customdata": points.structure_ids,
             "hovertemplate": "%{x} calculations, %{y} hits<br>last: structure %{customdata}<extra></extra>"}]
    random_hits = [hit for hit, function in zip(points.hits, points.functions, strict=True) if function == RANDOM]
    if random_hits:
        rate = sum(random_hits) / len(random_hits)
        data.append({"type": "scatter", "x": spent, "y": [rate * n for n in spent], "mode": "lines",
                     "line": {"dash": "dash", "color": "grey"},
                     "name": f"random at the random rounds' rate ({rate:.0%})"})
    rounds = points.rounds
    shapes = [{"type": "line", "x0": spent[index - 1] + 0.5, "x1": spent[index - 1] + 0.5, "yref": "paper",
               "y0": 0, "y1": 1, "line": {"color": "#ddd", "width": 1}}
              for index in range(1, len(rounds)) if rounds[index] != rounds[index - 1]]
    return _figure(data, title={"text": escape(title)}, shapes=shapes,
                   xaxis={"title": {"text": "DFT calculations"}}, yaxis={"title": {"text": "hits found"}},
                   legend={"orientation": "h", "y": -0.25})


def parity(target: str, ids: list[int], computed: list[float], mean: list[float], std: list[float],
           title: str) -> dict:
    """Predicted (mean ± std) against computed values, with the diagonal; a point's
    ``customdata`` is its structure id (a click opens the structure)."""
    if not computed:
        return _figure([], title={"text": escape(title)})
    low, high = min(computed + mean), max(computed + mean)
    return _figure(
        [{"type": "scatter", "x": computed, "y": mean, "mode": "markers", "name": "structures",
          "error_y": {"type": "data", "array": std, "visible": True, "thickness": 1},
          "customdata": ids,
          "hovertemplate": "structure %{customdata}<br>computed %{x:.4g}<br>predicted %{y:.4g}<extra></extra>"},
         {"type": "scatter", "x": [low, high], "y": [low, high], "mode": "lines", "name": "y = x",
          "line": {"color": "grey", "dash": "dot"}, "hoverinfo": "skip"}],
        title={"text": escape(title)}, xaxis={"title": {"text": f"computed {escape(target)}"}},
        yaxis={"title": {"text": f"predicted {escape(target)}"}}, showlegend=False)


def ledger_parity(points: LedgerPoints, target: str) -> dict:
    """Parity of the prediction each candidate was chosen on against what DFT computed."""
    values = points.targets[target]
    chosen = [n for n, (mean, computed) in enumerate(zip(values.mean, values.computed, strict=True))
              if mean is not None and computed is not None]
    return parity(target, [points.structure_ids[n] for n in chosen],
                  [values.computed[n] for n in chosen], [values.mean[n] for n in chosen],
                  [values.std[n] or 0.0 for n in chosen], f"{target}: predicted when chosen vs computed")


def hull(system: HullSystem) -> dict:
    """Formation energy against composition, the lower hull through the stable phases,
    the campaign's choices marked; hover gives the energy above the hull."""
    on_hull = sorted((x, y) for x, y, above in zip(system.fraction, system.formation_energy, system.e_above_hull,
                                                    strict=True) if above <= HULL_TOLERANCE)
    first, second = system.system.split("-")

    def points(chosen: bool, name: str, marker: dict) -> dict:
        at = [n for n, flag in enumerate(system.chosen) if flag == chosen]
        return {"type": "scatter", "mode": "markers", "name": name, "marker": marker,
                "x": [system.fraction[n] for n in at], "y": [system.formation_energy[n] for n in at],
                "customdata": [[system.keys[n], system.e_above_hull[n]] for n in at],
                "hovertemplate": "structure %{customdata[0]}<br>%{customdata[1]:.3f} eV/atom above the hull"
                                 "<extra></extra>"}

    data = [{"type": "scatter", "mode": "lines", "name": "hull", "x": [x for x, _ in on_hull],
             "y": [y for _, y in on_hull], "line": {"color": "black"}, "hoverinfo": "skip"},
            points(False, "other phases", {"color": "#9ca3af", "size": 8}),
            points(True, "chosen by the campaign", {"color": "#dc2626", "size": 10, "symbol": "diamond"})]
    return _figure(data, title={"text": f"{escape(system.system)} hull"},
                   xaxis={"title": {"text": f"fraction of {escape(second)} (rest {escape(first)})"}, "range": [0, 1]},
                   yaxis={"title": {"text": "formation energy (eV/atom)"}})


def model_parity(points: ParityPoints, model: str) -> dict:
    return parity(points.target, points.structure_ids, points.computed, points.mean, points.std,
                  f"{model}: {points.target}, predicted vs stored label")


def _cell_edges(lattice: np.ndarray) -> dict:
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    xyz: list[list[float | None]] = [[], [], []]
    for a in range(8):
        for b in range(a + 1, 8):
            if np.abs(corners[a] - corners[b]).sum() == 1:  # the 12 edges: corners one step apart
                for axis, (start, end) in enumerate(zip(corners[a] @ lattice, corners[b] @ lattice, strict=True)):
                    xyz[axis] += [float(start), float(end), None]
    return {"type": "scatter3d", "mode": "lines", "x": xyz[0], "y": xyz[1], "z": xyz[2], "name": "cell",
            "line": {"color": "#555", "width": 3}, "hoverinfo": "skip", "showlegend": False}


def per_site_arrays(view: StructureView) -> dict[str, list[float]]:
    """One number per site, by name: each per-site label and prediction (first column of a
    vector per site) that the 3D view can colour the atoms by."""
    arrays = {}
    for label in view.labels:
        if label.kind == "per_site" and label.array is not None:
            arrays[f"{label.target} (label)"] = label.array
    for prediction in view.predictions:
        if prediction.kind == "per_site" and prediction.mean_array is not None:
            arrays[f"{prediction.target} ({prediction.model.label})"] = prediction.mean_array
    return {name: np.asarray(values, dtype=float).reshape(len(view.species), -1)[:, 0].tolist()
            for name, values in arrays.items() if np.size(values) and np.size(values) % len(view.species) == 0}


def structure_3d(view: StructureView) -> dict:
    """Atoms in the cell, one trace per element, the cell's edges, and one hidden trace per
    per-site array (buttons show the atoms coloured by it)."""
    xyz = np.asarray(view.cartesian, dtype=float).reshape(-1, 3)
    species = np.array(view.species)
    data = []
    for element in dict.fromkeys(view.species):
        at = species == element
        data.append({"type": "scatter3d", "mode": "markers", "name": escape(element),
                     "x": xyz[at, 0].tolist(), "y": xyz[at, 1].tolist(), "z": xyz[at, 2].tolist(),
                     "marker": {"size": 9, "line": {"width": 1, "color": "#333"}},
                     "hovertemplate": f"{escape(element)}<br>(%{{x:.2f}}, %{{y:.2f}}, %{{z:.2f}}) Å<extra></extra>"})
    elements = len(data)
    data.append(_cell_edges(np.asarray(view.lattice, dtype=float)))
    arrays = per_site_arrays(view)
    for name, values in arrays.items():
        data.append({"type": "scatter3d", "mode": "markers", "name": escape(name), "visible": False,
                     "x": xyz[:, 0].tolist(), "y": xyz[:, 1].tolist(), "z": xyz[:, 2].tolist(),
                     "text": [escape(s) for s in view.species],
                     "marker": {"size": 9, "color": values, "colorscale": "RdBu", "showscale": True,
                                "colorbar": {"title": {"text": escape(name)}}},
                     "hovertemplate": "%{text}: %{marker.color:.3g}<extra></extra>"})
    layout = {"title": {"text": escape(view.formula)}, "height": 480,
              "scene": {"aspectmode": "data", "xaxis": {"title": {"text": "x (Å)"}},
                        "yaxis": {"title": {"text": "y (Å)"}}, "zaxis": {"title": {"text": "z (Å)"}}}}
    if arrays:
        buttons = [{"label": "element", "method": "restyle",
                    "args": [{"visible": [True] * (elements + 1) + [False] * len(arrays)}]}]
        for position, name in enumerate(arrays):
            visible = [False] * elements + [True] + [False] * len(arrays)
            visible[elements + 1 + position] = True
            buttons.append({"label": escape(name), "method": "restyle", "args": [{"visible": visible}]})
        layout["updatemenus"] = [{"type": "buttons", "direction": "right", "x": 0, "y": 1.08,
                                  "xanchor": "left", "buttons": buttons}]
    return _figure(data, **layout)


def spectra(view: StructureView) -> dict[str, dict]:
    """Per spectrum target: the computed spectrum and every model's prediction (± std band)."""
    figures = {}
    targets = dict.fromkeys(row.target for row in view.labels + view.predictions if row.kind == "spectrum")
    for target in targets:
        data = []
        for label in view.labels:
            if label.target == target and label.array is not None:
                x = view.grids.get(target) or list(range(len(label.array)))
                data.append({"type": "scatter", "mode": "lines", "x": x, "y": label.array, "name": "computed",
                             "line": {"color": "black", "width": 2}})
        for prediction in view.predictions:
            if prediction.target != target or prediction.mean_array is None:
                continue
            mean = np.asarray(prediction.mean_array, dtype=float)
            std = np.asarray(prediction.std_array if prediction.std_array is not None else np.zeros_like(mean))
            x = view.grids.get(target) or list(range(len(mean)))
            name = escape(prediction.model.label)
            data.append({"type": "scatter", "mode": "lines", "x": x + x[::-1],
                         "y": (mean + std).tolist() + (mean - std)[::-1].tolist(), "fill": "toself",
                         "line": {"width": 0}, "opacity": 0.25, "name": f"{name} ± std", "hoverinfo": "skip"})
            data.append({"type": "scatter", "mode": "lines", "x": x, "y": mean.tolist(), "name": name})
        units = next((row.units for row in view.labels + view.predictions if row.target == target), "")
        figures[target] = _figure(data, title={"text": f"{escape(target)}: computed and predicted"},
                                  xaxis={"title": {"text": "energy" if target in view.grids else "bin"}},
                                  yaxis={"title": {"text": escape(units or target)}})
    return figures
