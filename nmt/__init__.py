"""nmt: attention-based recurrent neural machine translation.

The Python API mirrors the commands: `Recipe` + `train` (nmt-train), `Translator`
(nmt-translate) and `score` (nmt-score).
"""

from nmt.errors import NmtError
from nmt.evaluate import ScoreReport, score
from nmt.recipe import Recipe
from nmt.search import Hypothesis
from nmt.train import TrainResult, train
from nmt.translate import Translator

__version__ = "0.1.0"
__all__ = ["Hypothesis", "NmtError", "Recipe", "ScoreReport", "TrainResult", "Translator",
           "score", "train", "__version__"]
