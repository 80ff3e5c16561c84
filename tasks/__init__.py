"""The pipeline's steps as Prefect tasks.

Importing this package redacts secrets from every log record of the process: every flow
imports its tasks, so a flow run started by a worker (no CLI, Prefect's logging) is covered.
"""

from valence_pipeline.logs import protect_process

protect_process()
