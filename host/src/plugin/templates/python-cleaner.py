"""{{name}}: a kiln cleaner. It keeps every sample as it is: put your cleaning in `clean`."""

{{prelude}}from wit_world.exports import cleaning
from wit_world.imports import types

CONFIG = {}


class Cleaning(exports.Cleaning):
{{methods}}
    def clean(self, samples: List[types.Sample]) -> List[cleaning.Outcome]:
        """One outcome per sample, in order: keep (with edited texts, None = unchanged) or drop.

        A drop would be: cleaning.Outcome_Dropped(cleaning.Drop(code="too-short", detail="12 characters"))
        """
        return [cleaning.Outcome_Keep(cleaning.Edit(instruction=None, response=None, notes=[])) for _ in samples]
