"""Sluice auth policy in Python (componentize-py), world `authorizer-policy`.

Every request must carry a team header whose value is on an allow list; each
team gets a requests-per-minute budget in the host's windowed counters; the
team becomes a label on the usage record.

Config (`team-header.toml`, handed to `init` as JSON):

    header = "x-team"        # which request header names the team
    teams = ["blue", "red"]  # allowed teams
    rpm_per_team = 600       # optional
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.authorizer import Verdict, Verdict_Allow, Verdict_Deny
from wit_world.imports import host
from wit_world.imports.context import Key, Request
from wit_world.imports.types import Denial, Label, Level

settings = {"header": "x-team", "teams": [], "rpm_per_team": None}


class Lifecycle(exports.Lifecycle):
    def init(self, config: str) -> None:
        given = json.loads(config)
        unknown = sorted(set(given) - set(settings))
        if unknown:
            raise Err(f"team-header config: unknown field(s) {', '.join(unknown)}")
        settings.update(given)
        if not settings["teams"]:
            raise Err("team-header config: `teams` must not be empty")
        host.log(Level.INFO, f"team-header: {len(settings['teams'])} teams allowed via {settings['header']}")


class Authorizer(exports.Authorizer):
    def authorize(self, req: Request, key: Key | None) -> Verdict:
        header = settings["header"]
        team = req.header(header)
        if team is None or team not in settings["teams"]:
            return Verdict_Deny(Denial(403, "team_not_allowed", f"Send a {header} header naming an allowed team.", None))
        limit = settings["rpm_per_team"]
        if limit is not None:
            window = host.counter_add(f"team-rpm:{team}", 1, 60_000)
            if window.total > limit:
                retry = max(1, -(-window.resets_in_ms // 1000))
                return Verdict_Deny(Denial(429, "rate_limit_exceeded", f"Team {team} reached {limit} requests per minute.", retry))
        return Verdict_Allow([Label("team", team)])
