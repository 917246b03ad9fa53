"""{{name}}: a kiln QC rule. It reports the number of samples and passes every set: put your
metrics and gates in `evaluate`."""

import json
from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import checking
from wit_world.imports import types

CONFIG = {}


class Checking(exports.Checking):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(name="{{name}}", version="0.1.0", wit_version="{{wit_version}}")

    def configure(self, config: str) -> None:
        """`config` is the plugin's table from the kiln config, as JSON ("{}" when there is none)."""
        global CONFIG
        try:
            CONFIG = json.loads(config or "{}")
        except ValueError as e:
            raise Err(types.PluginError(code="bad-config", message=f"{{name}} config: {e}", record_ids=[]))

    def evaluate(self, samples: List[types.Sample]) -> checking.Report:
        """Judge the whole set: named metrics with thresholds, a pass, and reasons for a failure."""
        count = checking.Metric(
            name="samples", value=float(len(samples)), threshold=None, comparison=checking.Comparison.REPORT_ONLY, pass_=True
        )
        return checking.Report(metrics=[count], pass_=True, reasons=[])
