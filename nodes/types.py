"""Socket types of the pack and the payload keys it adds to native LATENT / CONDITIONING."""

from comfy_api.latest import io

ToonCrafterModelType = io.Custom("TOONCRAFTER_MODEL")
SketchEncoderType = io.Custom("TOONCRAFTER_SKETCH_ENCODER")

CATEGORY = "ToonCrafter"
# Extra key in the LATENT dict: the keyframes' posterior and the decoder's reference features.
KEYFRAMES_KEY = "tooncrafter_keyframes"
# Extra keys in each CONDITIONING entry's options, read by the native model's extra_conds: the
# frame-stride condition and the keyframes' posterior (the same KeyframeEncoding as in the LATENT).
FS_KEY = "tooncrafter_fs"
POSTERIOR_KEY = "tooncrafter_posterior"
