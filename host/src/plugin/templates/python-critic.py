"""{{name}}: a kiln critic. It asks the model nothing and passes every sample: put your judging
prompts in `requests` and your decision in `decide`."""

import json
from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import judging
from wit_world.imports import types

CONFIG = {}


class Judging(exports.Judging):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(name="{{name}}", version="0.1.0", wit_version="{{wit_version}}")

    def configure(self, config: str) -> None:
        """`config` is the plugin's table from the kiln config, as JSON ("{}" when there is none)."""
        global CONFIG
        try:
            CONFIG = json.loads(config or "{}")
        except ValueError as e:
            raise Err(types.PluginError(code="bad-config", message=f"{{name}} config: {e}", record_ids=[]))

    def requests(self, samples: List[types.Sample]) -> List[judging.ScoreRequest]:
        """The prompts the model scores: kiln computes the log-probabilities of the two
        single-token answers (e.g. " A" and " B") after each prompt."""
        return []

    def decide(self, samples: List[types.Sample], scores: List[judging.Score]) -> List[judging.Judged]:
        """Verdicts from the scores of `requests` (one score per request, same ids and aspects)."""
        return [
            judging.Judged(
                sample_id=s.id,
                verdict=types.Verdict(critic="{{name}}", aspect="any", pass_=True, margin=0.0, reason="every sample passes"),
            )
            for s in samples
        ]
