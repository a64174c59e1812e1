"""structure lineage (substitution, relaxation) and target_values.detail

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 20:10:40.602401
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
LINEAGE_KIND = sa.Enum('substitution', 'relaxation', name='lineage_kind', native_enum=False,
                       create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        'structure_lineage',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('structure_id', BIG_ID, nullable=False),
        sa.Column('parent_id', BIG_ID, nullable=False),
        sa.Column('kind', LINEAGE_KIND, nullable=False),
        sa.Column('detail', JSON_DOCUMENT, nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(['parent_id'], ['structures.id'],
                                name=op.f('fk_structure_lineage_parent_id_structures'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['structure_id'], ['structures.id'],
                                name=op.f('fk_structure_lineage_structure_id_structures'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_structure_lineage')),
        sa.UniqueConstraint('structure_id', 'parent_id', 'kind',
                            name=op.f('uq_structure_lineage_structure_id_parent_id_kind')),
    )
    with op.batch_alter_table('structure_lineage', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_structure_lineage_parent_id'), ['parent_id'], unique=False)

    with op.batch_alter_table('target_values', schema=None) as batch_op:
        batch_op.add_column(sa.Column('detail', JSON_DOCUMENT, nullable=True))


def downgrade() -> None:
    # Not in batch mode: SQLite would rebuild target_values under the views that read it.
    op.drop_column('target_values', 'detail')
    with op.batch_alter_table('structure_lineage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_structure_lineage_parent_id'))
    op.drop_table('structure_lineage')
