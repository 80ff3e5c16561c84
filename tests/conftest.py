"""Shared fixtures. Each room's fixtures live in its own plugin module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.emulator",
    "tests.fixtures.store",
    "tests.fixtures.prefect_server",
    "tests.fixtures.reliability",
]
