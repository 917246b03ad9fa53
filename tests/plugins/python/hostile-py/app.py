"""A cleaner written only for kiln's tests: it misbehaves, in the way its config's "mode" names,
on samples whose instruction contains "TRIGGER", and keeps the others unchanged."""

import json
import os
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import cleaning
from wit_world.imports import types

MODE = ""


def misbehave(s):
    if MODE == "loop":
        while True:
            pass
    if MODE == "memory":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if MODE == "raise":
        raise ValueError(f"hostile-py cannot stand {s.id}")
    if MODE == "recurse":
        def down(n):
            return down(n + 1) + 1
        sys.setrecursionlimit(10**9)
        down(0)
    if MODE == "error":
        raise Err(types.PluginError(code="refused", message=f"sample {s.id} refused", record_ids=[s.id]))
    if MODE == "escape":
        # Everything outside the granted folder, and the environment, is closed.
        found = []
        for path in ["/etc/passwd", "../", "/"]:
            try:
                found.append(f"{path}: {len(os.listdir(path)) if path.endswith('/') else len(open(path).read())}")
            except OSError as e:
                found.append(f"{path}: {type(e).__name__}")
        found.append(f"env: {len(os.environ)}")
        return cleaning.Outcome_Keep(cleaning.Edit(instruction=None, response="; ".join(found), notes=[]))
    raise ValueError(f"unknown mode {MODE}")


class Cleaning(exports.Cleaning):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo(name="hostile-py", version="0.1.0", wit_version="0.1.0")

    def configure(self, config: str) -> None:
        global MODE
        MODE = json.loads(config or "{}").get("mode", "")

    def clean(self, samples):
        out = []
        for s in samples:
            if "TRIGGER" in s.instruction:
                out.append(misbehave(s))
            else:
                out.append(cleaning.Outcome_Keep(cleaning.Edit(instruction=None, response=None, notes=[])))
        return out
