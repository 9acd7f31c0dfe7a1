"""The patients part's per-process object (`PatientsRuntime`: the group commit of creates),
how the lifespan runs it, and its accessor (`patients_of`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from databases import Database

from app.core.state import HasState, part_of
from app.patients.creates import CreateWriter


@dataclass
class PatientsRuntime:
    creates: CreateWriter  # creates without an Idempotency-Key, committed together


@contextlib.asynccontextmanager
async def running_patients(database: Database) -> AsyncIterator[PatientsRuntime]:
    """The create writer; the creates in flight are committed before it stops."""
    runtime = PatientsRuntime(CreateWriter(database))
    try:
        yield runtime
    finally:
        await runtime.creates.aclose()


def patients_of(conn: HasState) -> PatientsRuntime:
    return part_of(conn, "patients", PatientsRuntime)
