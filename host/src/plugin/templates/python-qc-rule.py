"""{{name}}: a kiln QC rule. It reports the number of samples and passes every set: put your
metrics and gates in `evaluate`."""

{{prelude}}from wit_world.exports import checking
from wit_world.imports import types

CONFIG = {}


class Checking(exports.Checking):
{{methods}}
    def evaluate(self, samples: List[types.Sample]) -> checking.Report:
        """Judge the whole set: named metrics with thresholds, a pass, and reasons for a failure."""
        count = checking.Metric(
            name="samples", value=float(len(samples)), threshold=None, comparison=checking.Comparison.REPORT_ONLY, pass_=True
        )
        return checking.Report(metrics=[count], pass_=True, reasons=[])
