"""Upload notifications, Prefect-free: what object stores POST (`messages`), the webhook that
receives them (`webhook`), the watcher for stores that send nothing (`watcher`), and the
notices kept in the results database and sent on in batches (`ledger`, `batching`).

The commands (`commands/events.py`) wire these to Prefect's event API.
"""
