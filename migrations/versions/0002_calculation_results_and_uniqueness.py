"""calculations: one per structure and preset, results, heartbeat, attempt details

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 22:31:03.108442
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('calculation_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('workdir', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('exit_code', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('wall_time_s', sa.Double(), nullable=True))

    with op.batch_alter_table('calculations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('threads', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('results', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('arrays', sa.LargeBinary(), nullable=True))
        batch_op.drop_index(batch_op.f('ix_calculations_structure_id_preset'))
        batch_op.create_unique_constraint(batch_op.f('uq_calculations_structure_id_preset'), ['structure_id', 'preset'])


def downgrade() -> None:
    with op.batch_alter_table('calculations', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_calculations_structure_id_preset'), type_='unique')
        batch_op.create_index(batch_op.f('ix_calculations_structure_id_preset'), ['structure_id', 'preset'], unique=False)
        batch_op.drop_column('arrays')
        batch_op.drop_column('results')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('reason')
        batch_op.drop_column('threads')

    with op.batch_alter_table('calculation_attempts', schema=None) as batch_op:
        batch_op.drop_column('wall_time_s')
        batch_op.drop_column('exit_code')
        batch_op.drop_column('workdir')
