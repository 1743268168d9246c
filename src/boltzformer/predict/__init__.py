"""From an image and a prompt to a mask: the one inference engine (:class:`Predictor`; volumes in
:mod:`.volumes`, typed results in :mod:`.results`), files and folders (:mod:`.files`), the one writer of
masks and records (:mod:`.outputs`), overlap between prompts, lesions, sampling maps and overlays."""

from boltzformer.predict.engine import Predictor
from boltzformer.predict.results import Passes, Prediction, VolumePrediction

__all__ = ["Passes", "Prediction", "Predictor", "VolumePrediction"]
