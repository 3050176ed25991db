"""Sluice log editor in Python (componentize-py), world `editor-policy`.

Drops the prompt and completion text from every usage record unless its
`keep-content` label says `yes`, and masks the values of chosen labels.
Accounting fields (tokens, cost, status) cannot be edited.

Config (`content-guard.toml`, handed to `init` as JSON):

    mask_labels = ["user-email"]   # labels whose values become `[masked]`
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.context import Usage
from wit_world.imports.types import Label

settings = {"mask_labels": []}


class Lifecycle(exports.Lifecycle):
    def init(self, config: str) -> None:
        given = json.loads(config)
        unknown = sorted(set(given) - set(settings))
        if unknown:
            raise Err(f"content-guard config: unknown field(s) {', '.join(unknown)}")
        settings.update(given)


class Editor(exports.Editor):
    def edit(self, rec: Usage) -> bool:
        labels = rec.labels()
        if not any(l.name == "keep-content" and l.value == "yes" for l in labels):
            rec.set_prompt(None)
            rec.set_completion(None)
        mask = settings["mask_labels"]
        if any(l.name in mask for l in labels):
            rec.set_labels([Label(l.name, "[masked]") if l.name in mask else l for l in labels])
        return True
