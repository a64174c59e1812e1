"""campaign ledger: round models and summary, predicted values and expected cost

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 01:16:40.495124
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('acquisitions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('predicted', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('expected_cost_s', sa.Double(), nullable=True))

    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('models', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('summary', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_column('summary')
        batch_op.drop_column('models')

    with op.batch_alter_table('acquisitions', schema=None) as batch_op:
        batch_op.drop_column('expected_cost_s')
        batch_op.drop_column('predicted')
