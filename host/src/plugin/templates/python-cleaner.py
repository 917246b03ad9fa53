"""{{name}}: a kiln cleaner. It keeps every sample as it is: put your cleaning in `clean`."""

import json
from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import cleaning
from wit_world.imports import types

CONFIG = {}


class Cleaning(exports.Cleaning):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(name="{{name}}", version="0.1.0", wit_version="{{wit_version}}")

    def configure(self, config: str) -> None:
        """`config` is the plugin's table from the kiln config, as JSON ("{}" when there is none)."""
        global CONFIG
        try:
            CONFIG = json.loads(config or "{}")
        except ValueError as e:
            raise Err(types.PluginError(code="bad-config", message=f"{{name}} config: {e}", record_ids=[]))

    def clean(self, samples: List[types.Sample]) -> List[cleaning.Outcome]:
        """One outcome per sample, in order: keep (with edited texts, None = unchanged) or drop.

        A drop would be: cleaning.Outcome_Dropped(cleaning.Drop(code="too-short", detail="12 characters"))
        """
        return [cleaning.Outcome_Keep(cleaning.Edit(instruction=None, response=None, notes=[])) for _ in samples]
