"""Labeled graphs for one target, read from the store."""

from dataclasses import dataclass

import torch
from sqlalchemy import Engine, select

from workbench.errors import NotFound
from workbench.featurize.cache import load_graphs
from workbench.featurize.data import CrystalGraphData, graph_to_data
from workbench.featurize.featurizer import Featurizer
from workbench.store.engine import session_scope
from workbench.store.schema import Structure, TargetDefinition, TargetKind, TargetValue
from workbench.train.kinds import KINDS


@dataclass
class LabeledGraphs:
    """Graphs of the labeled structures of one target, ``y`` set on each.

    ``y`` is ``(1,)`` for a scalar, ``(1, bins)`` for a spectrum and ``(n_sites[, k])``
    per site, so that a PyG batch stacks them into ``(B,)``, ``(B, bins)``, ``(N[, k])``.
    """

    target: str
    kind: TargetKind
    structure_ids: list[int]
    dedup_keys: list[str]
    data: list[CrystalGraphData]

    def subset(self, structure_ids: list[int]) -> list[CrystalGraphData]:
        position = {structure_id: index for index, structure_id in enumerate(self.structure_ids)}
        return [self.data[position[structure_id]] for structure_id in structure_ids]


def load_labeled_graphs(engine: Engine, target: str, featurizer: Featurizer, *,
                        triplets: bool = False) -> LabeledGraphs:
    """Every structure labeled for ``target``, with its graph (which must be featurized),
    and with its bond-angle triplets if ``triplets`` (built here, never cached)."""
    with session_scope(engine) as session:
        definition = session.scalar(select(TargetDefinition).where(TargetDefinition.name == target))
        if definition is None:
            raise NotFound(f"no target named {target!r} in the store")
        rows = session.execute(
            select(TargetValue.structure_id, TargetValue.value, TargetValue.value_array, Structure.dedup_key)
            .join(Structure, Structure.id == TargetValue.structure_id)
            .where(TargetValue.target_id == definition.id)
            .order_by(TargetValue.structure_id)
        ).all()
        kind = definition.kind
    graphs = load_graphs(engine, featurizer.key, [row.structure_id for row in rows])
    table = featurizer.feature_table()
    spec = KINDS[kind]
    data = []
    for row in rows:
        item = graph_to_data(graphs[row.structure_id], table, triplets=triplets)
        item.y = spec.label(row.value, row.value_array)
        item.structure_id = torch.tensor([row.structure_id])
        data.append(item)
    return LabeledGraphs(target, kind, [row.structure_id for row in rows], [row.dedup_key for row in rows], data)
