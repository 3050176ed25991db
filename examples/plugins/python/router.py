"""Sluice router in Python (componentize-py), world `planner-policy` (WIT 1.2).

A request's tenant header picks the healthy channels tagged with the tenant's
name, highest priority first, then the healthy channels tagged `shared`; a
tenant with neither is refused with 403 `tenant_has_no_channel`. Channel tags
come from the gateway's config (`tags = ["acme", "shared"]`).

Config (`tenant-router.toml`, handed to `init` as JSON):

    header = "x-tenant"      # which request header names the tenant
    shared_tag = "shared"    # channels any tenant may use after its own
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.planner import Candidate, Step
from wit_world.imports import candidates as offered
from wit_world.imports.context import Request
from wit_world.imports.types import Denial

settings = {"header": None, "shared_tag": "shared"}


class Lifecycle(exports.Lifecycle):
    def init(self, config: str) -> None:
        given = json.loads(config)
        unknown = sorted(set(given) - set(settings))
        if unknown:
            raise Err(f"tenant-router config: unknown field(s) {', '.join(unknown)}")
        settings.update(given)
        if not isinstance(settings["header"], str):
            raise Err("tenant-router config: missing field `header`")


def tagged(candidates: list[Candidate], tag: str) -> list[int]:
    """The positions of the healthy candidates carrying `tag`, highest priority first."""
    chosen = [p for p, c in enumerate(candidates) if c.healthy and offered.has_tag(p, tag)]
    return sorted(chosen, key=lambda p: -candidates[p].priority)


class Planner(exports.Planner):
    def plan(self, req: Request, candidates: list[Candidate]) -> list[Step]:
        header = settings["header"]
        tenant = req.header(header) or ""
        plan = (tagged(candidates, tenant) if tenant else []) + tagged(candidates, settings["shared_tag"])
        if not plan:
            raise Err(Denial(403, "tenant_has_no_channel", f"No channel serves tenant '{tenant}' (send it in {header}).", None))
        return [Step(p, None) for p in plan]
