"""Stage 2 evaluation: reports over run directories and prediction on new audio.

``write_report`` renders the paper's tables (UAR mean ± std per feature selection and corpus),
confusion matrices and the layer-weight figure; ``predict_audio`` labels new audio files with a
trained run directory, extracting features in a subprocess so this process never imports torch.
The ``w2v2ser predict`` command's argument wiring lives in ``w2v2ser.evaluate._cli`` (not public API).
"""

from w2v2ser._process import prefer_onednn

from ._errors import EvaluateError, PredictError, RunDirError
from ._predict import Prediction, predict_audio
from ._report import write_report
from ._scoring import PredictionScore, predict_manifest, predict_store, score_predictions

prefer_onednn()  # TensorFlow loads lazily, after this: see prefer_onednn

__all__ = [
    "write_report", "predict_audio", "Prediction", "predict_manifest", "predict_store", "score_predictions",
    "PredictionScore",
    "EvaluateError", "RunDirError", "PredictError",
]
