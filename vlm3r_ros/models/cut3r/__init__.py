"""CUT3R, the frozen streaming 3-D model behind VLM-3R (our implementation of ARCroco3DStereo)."""

from .config import PUBLIC_CONFIGS, Cut3rConfig, Cut3rConfigError
from .heads import HEAD_OUTPUTS
from .modeling_cut3r import Cut3rHeadOutput, Cut3rInputError, Cut3rModel, Cut3rState, Cut3rStepOutput

__all__ = ["HEAD_OUTPUTS", "PUBLIC_CONFIGS", "Cut3rConfig", "Cut3rConfigError", "Cut3rHeadOutput",
           "Cut3rInputError", "Cut3rModel", "Cut3rState", "Cut3rStepOutput"]
