"""The ToonCrafter node pack: thin ComfyUI nodes over tooncrafter_core."""

from .colorize import LoadToonCrafterLineArt, ToonCrafterColorize
from .conditioning import DynamiCrafterImageConditioning, ToonCrafterConditioning
from .decoder import ToonCrafterDecode
from .loader import LoadToonCrafterModel
from .lora import LoadToonCrafterLora
from .native import ToonCrafterDDIM, ToonCrafterGuidanceRescale, ToonCrafterImageConditioning, ToonCrafterSigmas
from .sampler import ToonCrafterSampler
from .sequence import ToonCrafterSequence
from .sketch import LoadToonCrafterSketchEncoder, ToonCrafterApplySketch
from .training import ToonCrafterTrainLora

NODES = [
    LoadToonCrafterModel, LoadToonCrafterLora, ToonCrafterConditioning, ToonCrafterSampler, ToonCrafterDecode, ToonCrafterSequence,
    LoadToonCrafterSketchEncoder, ToonCrafterApplySketch, ToonCrafterImageConditioning, ToonCrafterDDIM, ToonCrafterSigmas,
    ToonCrafterGuidanceRescale, ToonCrafterTrainLora, DynamiCrafterImageConditioning, LoadToonCrafterLineArt,
    ToonCrafterColorize,
]
