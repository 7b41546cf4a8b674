"""nmt: attention-based recurrent neural machine translation.

The Python API mirrors the commands: `Recipe` + `train` (nmt-train), `Translator`
(nmt-translate), `score` (nmt-score) and `average_run` (nmt-average). Names are imported when
first used (PEP 562), so `import nmt` is cheap and scoring never loads PyTorch.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"
_WHERE = {
    "average_run": "nmt.checkpoint",
    "Hypothesis": "nmt.search.hypothesis",
    "NmtError": "nmt.errors",
    "Recipe": "nmt.recipe",
    "ScoreReport": "nmt.scoring.metrics",
    "score": "nmt.scoring.metrics",
    "TrainResult": "nmt.training",
    "train": "nmt.training",
    "Translator": "nmt.translate",
}
__all__ = [*sorted(_WHERE), "__version__"]

if _TYPE_CHECKING:  # for type checkers and editors; at run time `__getattr__` imports
    from nmt.checkpoint import average_run
    from nmt.errors import NmtError
    from nmt.scoring.metrics import ScoreReport, score
    from nmt.recipe import Recipe
    from nmt.search.hypothesis import Hypothesis
    from nmt.training import TrainResult, train
    from nmt.translate import Translator


def __getattr__(name: str) -> _Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'nmt' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # found once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
