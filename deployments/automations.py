"""The project's automations (deployments/automations.yaml), applied to a Prefect server by
name: a missing one is created, an existing one is updated in place, so applying twice
changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

AUTOMATIONS_FILE = Path(__file__).with_name("automations.yaml")


def load_automations(path: Path = AUTOMATIONS_FILE) -> list[Any]:
    """The file's automations as Prefect models (a typo fails here, before any server call)."""
    from prefect.events.schemas.automations import AutomationCore

    data = yaml.safe_load(path.read_text()) or {}
    return [AutomationCore.model_validate(spec) for spec in data.get("automations", [])]


def apply_automations(path: Path = AUTOMATIONS_FILE) -> list[tuple[str, str]]:
    """Create or update each automation; returns (name, "created" | "updated")."""
    return asyncio.run(_apply(load_automations(path)))


async def _apply(automations: list[Any]) -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client

    done = []
    async with get_client() as client:
        for automation in automations:
            existing = await client.read_automations_by_name(automation.name)
            if existing:
                await client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # duplicates from an earlier `prefect automation create`
                    await client.delete_automation(extra.id)
                done.append((automation.name, "updated"))
            else:
                await client.create_automation(automation)
                done.append((automation.name, "created"))
    return done
