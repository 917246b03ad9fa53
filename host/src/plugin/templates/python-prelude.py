import json
from typing import List

from componentize_py_types import Err
from wit_world import exports
