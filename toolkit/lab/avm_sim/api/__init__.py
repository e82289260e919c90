"""The simulator's endpoints: ``/cv_api``, ``/app_volumes`` (4.x) and the ``/_sim`` test hooks."""

from __future__ import annotations

from toolkit.lab.avm_sim.api import admin, av, cv
from toolkit.lab.avm_sim.server import Route


def all_routes() -> list[Route]:
    return [*cv.ROUTES, *av.ROUTES, *admin.ROUTES]
