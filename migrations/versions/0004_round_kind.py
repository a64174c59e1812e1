"""rounds.kind: random or model, moved out of the round's summary

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 20:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUND_KIND = sa.Enum('random', 'model', name='round_kind', native_enum=False, create_constraint=True, length=16)
# The columns the backfill reads and writes, as they are at this revision.
ROUNDS = sa.table(
    'rounds',
    sa.column('id', sa.Integer()),
    sa.column('kind', sa.String(16)),
    sa.column('summary', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')),
)


def upgrade() -> None:
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', ROUND_KIND, nullable=True))
    # Until now a random round was flagged by {"random": true} in its summary.
    connection = op.get_bind()
    for round_id, summary in connection.execute(sa.select(ROUNDS.c.id, ROUNDS.c.summary)).all():
        summary = dict(summary or {})
        kind = 'random' if summary.pop('random', False) else 'model'
        connection.execute(ROUNDS.update().where(ROUNDS.c.id == round_id)
                           .values(kind=kind, summary=summary or sa.null()))
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=ROUND_KIND, nullable=False)


def downgrade() -> None:
    connection = op.get_bind()
    random_rounds = connection.execute(sa.select(ROUNDS.c.id, ROUNDS.c.summary).where(ROUNDS.c.kind == 'random'))
    for round_id, summary in random_rounds.all():
        connection.execute(ROUNDS.update().where(ROUNDS.c.id == round_id)
                           .values(summary={**(summary or {}), 'random': True}))
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_rounds_round_kind'), type_='check')
        batch_op.drop_column('kind')
