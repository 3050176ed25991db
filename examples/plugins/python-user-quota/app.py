"""Sluice auth policy written in Python (built with componentize-py).

Every request must name its end user in a header; each user gets a
requests-per-minute budget kept in the host's windowed counters, and the user
becomes a label on the usage record.

Config (`user-quota.toml` next to the `.wasm`, handed to `init` as JSON):

    header = "x-user-id"     # which request header names the user
    rpm_per_user = 60        # requests per minute per user
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.auth import Decision, Decision_Allow, Decision_Deny
from wit_world.imports import host
from wit_world.imports.types import Denial, KeyInfo, Label, Level, RequestInfo

WINDOW_MS = 60_000
settings = {"header": "x-user-id", "rpm_per_user": 60}


class Lifecycle(exports.Lifecycle):
    def init(self, config: str) -> None:
        given = json.loads(config)
        unknown = set(given) - set(settings)
        if unknown:
            raise Err(f"user-quota config: unknown keys {sorted(unknown)}")
        settings.update(given)
        if not isinstance(settings["rpm_per_user"], int) or settings["rpm_per_user"] < 1:
            raise Err("user-quota config: rpm_per_user must be a positive integer")
        host.log(Level.INFO, f"user-quota: {settings['rpm_per_user']} rpm per {settings['header']}")


class Auth(exports.Auth):
    def authorize(self, req: RequestInfo, key: KeyInfo | None) -> Decision:
        header = settings["header"]
        user = next((h.value for h in req.headers if h.name == header), "")
        if not user:
            return Decision_Deny(Denial(403, "user_required", f"Send a {header} header naming the end user.", None))
        limit = settings["rpm_per_user"]
        window = host.counter_add(f"user-rpm:{user}", 1, WINDOW_MS)
        if window.total > limit:
            retry = max(1, -(-window.resets_in_ms // 1000))
            return Decision_Deny(Denial(429, "rate_limit_exceeded", f"User {user} reached {limit} requests per minute.", retry))
        return Decision_Allow([Label("user", user)])
