"""Convert released self-supervised checkpoints (MoCo, SimSiam, SwAV, DINO, BYOL, SimCLR, solo-learn, lightly,
torchvision/timm) into ``QScoreModel`` folders, strictly: every backbone tensor consumed, every head dropped by an
explicit rule and reported.

Example::

    from qscore_hf.convert import convert_checkpoint, ConversionReport
    from qscore_hf.publish import save_model_folder

    model = convert_checkpoint("moco_v2_800ep_pretrain.pth.tar")
    print(ConversionReport.from_config(model.config).summary())
    save_model_folder(model, "moco-v2-r50")
"""

from .layouts import FORMATS, Layout
from .loader import ConversionReport, Detection, convert_checkpoint, detect_format
from .reading import CheckpointExpansionError, ConversionError, TrustedCheckpointWarning, UnsafeCheckpointError
from .stats import compute_stats

__all__ = [
    "FORMATS",
    "CheckpointExpansionError",
    "ConversionError",
    "ConversionReport",
    "Detection",
    "Layout",
    "TrustedCheckpointWarning",
    "UnsafeCheckpointError",
    "compute_stats",
    "convert_checkpoint",
    "detect_format",
]
