"""Fixtures of the fault suite: one private Postgres cluster per session, a stack per test."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FaultStack, Postgres, make_base_dir, remove_base_dir


@pytest.fixture(scope="session")
def fault_base() -> Iterator[Path]:
    base = make_base_dir()
    try:
        yield base
    finally:
        remove_base_dir(base)


@pytest.fixture(scope="session")
def fault_postgres(fault_base: Path) -> Iterator[tuple[Postgres, dict[str, Any]]]:
    """A private Postgres cluster with a migrated, seeded template database."""
    postgres = Postgres(fault_base)
    postgres.start()
    try:
        yield postgres, postgres.template()
    finally:
        postgres.close()


@pytest.fixture
def fault_stack(
    request: pytest.FixtureRequest, fault_base: Path, fault_postgres: tuple[Postgres, dict[str, Any]]
) -> Iterator[Callable[..., FaultStack]]:
    """Build a ``FaultStack`` (fresh database, Redis, upstream and replicas) for this test;
    everything it started is stopped afterwards."""
    postgres, seed = fault_postgres
    made: list[FaultStack] = []

    def make(**options: Any) -> FaultStack:
        name = re.sub(r"\W+", "_", request.node.name.lower())[-40:] + f"_{len(made)}"
        base = fault_base / name
        base.mkdir()
        base.chmod(0o755)
        made.append(FaultStack(base, postgres, seed, name=name, **options))
        return made[-1]

    yield make
    for stack in made:
        stack.close()
