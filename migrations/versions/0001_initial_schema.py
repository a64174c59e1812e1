"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 19:59:16.583883
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Views are part of the user interface (docs/sql.md). The newest model version of a
# (structure, target) pair is the one with the highest model_versions.id. Both views are
# driven by `predictions`, so that ranking by std walks ix_predictions_target_id_std
# (benchmarks/store.md).
LATEST_PREDICTIONS = """
CREATE VIEW latest_predictions AS
SELECT p.id AS prediction_id,
       p.structure_id,
       t.name AS target,
       p.target_id,
       p.mean,
       p.std,
       p.mean_array,
       p.std_array,
       p.model_version_id,
       m.name AS model_name,
       m.registry_version,
       p.created_at
FROM predictions AS p
JOIN target_definitions AS t ON t.id = p.target_id
JOIN model_versions AS m ON m.id = p.model_version_id
WHERE NOT EXISTS (
    SELECT 1 FROM predictions AS newer
    WHERE newer.structure_id = p.structure_id
      AND newer.target_id = p.target_id
      AND newer.model_version_id > p.model_version_id
)
"""

CANDIDATES = """
CREATE VIEW candidates AS
SELECT p.structure_id,
       t.name AS target,
       p.target_id,
       s.reduced_formula,
       s.nsites,
       p.mean,
       p.std,
       p.model_version_id
FROM predictions AS p
JOIN target_definitions AS t ON t.id = p.target_id
JOIN structures AS s ON s.id = p.structure_id
WHERE NOT EXISTS (
    SELECT 1 FROM predictions AS newer
    WHERE newer.structure_id = p.structure_id
      AND newer.target_id = p.target_id
      AND newer.model_version_id > p.model_version_id
)
AND NOT EXISTS (
    SELECT 1 FROM target_values AS v
    WHERE v.structure_id = p.structure_id AND v.target_id = p.target_id
)
"""


def upgrade() -> None:
    op.create_table('campaigns',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns')),
    sa.UniqueConstraint('name', name=op.f('uq_campaigns_name'))
    )
    op.create_table('featurizers',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_featurizers'))
    )
    op.create_table('structures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('formula', sa.String(length=255), nullable=False),
    sa.Column('reduced_formula', sa.String(length=255), nullable=False),
    sa.Column('chemical_system', sa.String(length=255), nullable=False),
    sa.Column('composition', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('elements', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('nsites', sa.Integer(), nullable=False),
    sa.Column('nelements', sa.Integer(), nullable=False),
    sa.Column('lattice', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('species', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('frac_coords', sa.LargeBinary(), nullable=False),
    sa.Column('volume', sa.Double(), nullable=False),
    sa.Column('density', sa.Double(), nullable=False),
    sa.Column('spacegroup_number', sa.Integer(), nullable=False),
    sa.Column('spacegroup_symbol', sa.String(length=32), nullable=False),
    sa.Column('dedup_key', sa.String(length=320), nullable=False),
    sa.Column('fingerprint', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_structures'))
    )
    with op.batch_alter_table('structures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_structures_chemical_system'), ['chemical_system'], unique=False)
        batch_op.create_index(batch_op.f('ix_structures_dedup_key'), ['dedup_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_structures_reduced_formula'), ['reduced_formula'], unique=False)
        batch_op.create_index(batch_op.f('ix_structures_spacegroup_number'), ['spacegroup_number'], unique=False)

    op.create_table('target_definitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.Enum('scalar', 'spectrum', 'per_site', name='target_kind', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('units', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('length', sa.Integer(), nullable=True),
    sa.Column('site_shape', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('grid', sa.LargeBinary(), nullable=True),
    sa.Column('grid_units', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_target_definitions')),
    sa.UniqueConstraint('name', name=op.f('uq_target_definitions_name'))
    )
    op.create_table('calculations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('structure_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('preset', sa.String(length=64), nullable=False),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'done', 'failed', 'cancelled', name='calculation_status', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('workdir', sa.Text(), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wall_time_s', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], name=op.f('fk_calculations_structure_id_structures'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calculations'))
    )
    with op.batch_alter_table('calculations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calculations_status'), ['status'], unique=False)
        batch_op.create_index('ix_calculations_structure_id_preset', ['structure_id', 'preset'], unique=False)

    op.create_table('graphs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('featurizer_key', sa.String(length=64), nullable=False),
    sa.Column('structure_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('num_nodes', sa.Integer(), nullable=False),
    sa.Column('num_edges', sa.Integer(), nullable=False),
    sa.Column('arrays', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['featurizer_key'], ['featurizers.key'], name=op.f('fk_graphs_featurizer_key_featurizers')),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], name=op.f('fk_graphs_structure_id_structures'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_graphs')),
    sa.UniqueConstraint('featurizer_key', 'structure_id', name=op.f('uq_graphs_featurizer_key_structure_id'))
    )
    with op.batch_alter_table('graphs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_graphs_structure_id'), ['structure_id'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('registry_version', sa.Integer(), nullable=False),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('targets', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('architecture', sa.String(length=64), nullable=False),
    sa.Column('featurizer_key', sa.String(length=64), nullable=True),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['featurizer_key'], ['featurizers.key'], name=op.f('fk_model_versions_featurizer_key_featurizers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('name', 'registry_version', name=op.f('uq_model_versions_name_registry_version'))
    )
    op.create_table('structure_sources',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('structure_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source', sa.String(length=255), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('file', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], name=op.f('fk_structure_sources_structure_id_structures'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_structure_sources')),
    sa.UniqueConstraint('source', 'external_id', name=op.f('uq_structure_sources_source_external_id'))
    )
    with op.batch_alter_table('structure_sources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_structure_sources_structure_id'), ['structure_id'], unique=False)

    op.create_table('calculation_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('calculation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'done', 'failed', 'cancelled', name='attempt_status', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['calculation_id'], ['calculations.id'], name=op.f('fk_calculation_attempts_calculation_id_calculations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calculation_attempts')),
    sa.UniqueConstraint('calculation_id', 'number', name=op.f('uq_calculation_attempts_calculation_id_number'))
    )
    op.create_table('predictions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('structure_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('mean', sa.Double(), nullable=True),
    sa.Column('std', sa.Double(), nullable=True),
    sa.Column('mean_array', sa.LargeBinary(), nullable=True),
    sa.Column('std_array', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_predictions_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], name=op.f('fk_predictions_structure_id_structures'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['target_id'], ['target_definitions.id'], name=op.f('fk_predictions_target_id_target_definitions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_predictions')),
    sa.UniqueConstraint('model_version_id', 'structure_id', 'target_id', name=op.f('uq_predictions_model_version_id_structure_id_target_id'))
    )
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.create_index('ix_predictions_structure_id_target_id', ['structure_id', 'target_id', 'model_version_id'], unique=False)
        batch_op.create_index('ix_predictions_target_id_mean', ['target_id', 'mean'], unique=False)
        batch_op.create_index('ix_predictions_target_id_std', ['target_id', 'std'], unique=False)

    op.create_table('rounds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_rounds_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_rounds_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rounds')),
    sa.UniqueConstraint('campaign_id', 'number', name=op.f('uq_rounds_campaign_id_number'))
    )
    op.create_table('target_values',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('structure_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('value_array', sa.LargeBinary(), nullable=True),
    sa.Column('source_file', sa.Text(), nullable=True),
    sa.Column('source_row', sa.String(length=64), nullable=True),
    sa.Column('calculation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.CheckConstraint('(value IS NULL) <> (value_array IS NULL)', name=op.f('ck_target_values_one_payload')),
    sa.ForeignKeyConstraint(['calculation_id'], ['calculations.id'], name=op.f('fk_target_values_calculation_id_calculations'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], name=op.f('fk_target_values_structure_id_structures'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['target_id'], ['target_definitions.id'], name=op.f('fk_target_values_target_id_target_definitions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_target_values')),
    sa.UniqueConstraint('structure_id', 'target_id', name=op.f('uq_target_values_structure_id_target_id'))
    )
    with op.batch_alter_table('target_values', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_target_values_calculation_id'), ['calculation_id'], unique=False)
        batch_op.create_index('ix_target_values_target_id_value', ['target_id', 'value'], unique=False)

    op.create_table('acquisitions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('structure_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('acquisition_function', sa.String(length=64), nullable=False),
    sa.Column('score', sa.Double(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('batch', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('proposed', 'dispatched', 'labeled', 'failed', name='acquisition_status', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('calculation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('outcome', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['calculation_id'], ['calculations.id'], name=op.f('fk_acquisitions_calculation_id_calculations'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_acquisitions_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_acquisitions_round_id_rounds'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], name=op.f('fk_acquisitions_structure_id_structures'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_acquisitions')),
    sa.UniqueConstraint('round_id', 'structure_id', name=op.f('uq_acquisitions_round_id_structure_id'))
    )
    with op.batch_alter_table('acquisitions', schema=None) as batch_op:
        batch_op.create_index('ix_acquisitions_structure_id_status', ['structure_id', 'status'], unique=False)


    op.execute(LATEST_PREDICTIONS)
    op.execute(CANDIDATES)

def downgrade() -> None:
    op.execute("DROP VIEW candidates")
    op.execute("DROP VIEW latest_predictions")
    with op.batch_alter_table('acquisitions', schema=None) as batch_op:
        batch_op.drop_index('ix_acquisitions_structure_id_status')

    op.drop_table('acquisitions')
    with op.batch_alter_table('target_values', schema=None) as batch_op:
        batch_op.drop_index('ix_target_values_target_id_value')
        batch_op.drop_index(batch_op.f('ix_target_values_calculation_id'))

    op.drop_table('target_values')
    op.drop_table('rounds')
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index('ix_predictions_target_id_std')
        batch_op.drop_index('ix_predictions_target_id_mean')
        batch_op.drop_index('ix_predictions_structure_id_target_id')

    op.drop_table('predictions')
    op.drop_table('calculation_attempts')
    with op.batch_alter_table('structure_sources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_structure_sources_structure_id'))

    op.drop_table('structure_sources')
    op.drop_table('model_versions')
    with op.batch_alter_table('graphs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_graphs_structure_id'))

    op.drop_table('graphs')
    with op.batch_alter_table('calculations', schema=None) as batch_op:
        batch_op.drop_index('ix_calculations_structure_id_preset')
        batch_op.drop_index(batch_op.f('ix_calculations_status'))

    op.drop_table('calculations')
    op.drop_table('target_definitions')
    with op.batch_alter_table('structures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_structures_spacegroup_number'))
        batch_op.drop_index(batch_op.f('ix_structures_reduced_formula'))
        batch_op.drop_index(batch_op.f('ix_structures_dedup_key'))
        batch_op.drop_index(batch_op.f('ix_structures_chemical_system'))

    op.drop_table('structures')
    op.drop_table('featurizers')
    op.drop_table('campaigns')
