"""Run status `crashed`: a run whose process died (or whose Prefect flow run ended without
closing its row) is marked so by a state hook or by the next run, instead of staying `running`.

Revision ID: 0002_run_crashed
Revises: 0002_run_model
Create Date: 2026-11-29

The status column is VARCHAR + CHECK (no native enum), so adding a value swaps the constraint;
on SQLite batch mode rebuilds the table to do it.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_run_crashed"
down_revision: str | None = "0002_run_model"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_pipeline_runs_run_status"
_OLD = ("running", "completed", "failed")
_NEW = (*_OLD, "crashed")


def _check(values: tuple[str, ...]) -> str:
    return "status IN ({})".format(", ".join(f"'{v}'" for v in values))


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_constraint(op.f(_NAME), type_="check")
        batch.create_check_constraint(op.f(_NAME), _check(_NEW))


def downgrade() -> None:
    op.execute("UPDATE pipeline_runs SET status = 'failed' WHERE status = 'crashed'")
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_constraint(op.f(_NAME), type_="check")
        batch.create_check_constraint(op.f(_NAME), _check(_OLD))
