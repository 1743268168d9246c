"""From an image and a prompt to a mask: the one inference engine (:class:`Predictor`), files and
folders (:mod:`.files`), overlap between prompts, lesions, sampling maps and overlays."""

from boltzformer.predict.engine import Predictor

__all__ = ["Predictor"]
