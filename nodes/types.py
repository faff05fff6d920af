"""Socket types of the pack and the payload keys it adds to native LATENT / CONDITIONING."""

from comfy_api.latest import io

ToonCrafterModelType = io.Custom("TOONCRAFTER_MODEL")
SketchEncoderType = io.Custom("TOONCRAFTER_SKETCH_ENCODER")

CATEGORY = "ToonCrafter"
# Extra keys in the LATENT dict: the keyframes' posterior and the decoder's reference features.
KEYFRAMES_KEY = "tooncrafter_keyframes"
# Extra key in each CONDITIONING entry's options: the frame-stride condition.
FS_KEY = "tooncrafter_fs"
# Extra key in each CONDITIONING entry's options: the sketch guide of ToonCrafter Apply Sketch.
SKETCH_KEY = "tooncrafter_sketch"
