"""{{name}}: a kiln critic. It asks the model nothing and passes every sample: put your judging
prompts in `requests` and your decision in `decide`."""

{{prelude}}from wit_world.exports import judging
from wit_world.imports import types

CONFIG = {}


class Judging(exports.Judging):
{{methods}}
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
