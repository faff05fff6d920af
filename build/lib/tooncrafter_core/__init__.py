"""ToonCrafter keyframe interpolation as a plain PyTorch library (it never imports ComfyUI).

Rooms, each importing only the ones below it:
- `commands/`: the CLI's verbs (`python -m tooncrafter_core VERB`), one module each;
- the inference floor: `pipeline` (keyframes -> frames) over `sampling` (DDIM, guidance),
  `sketches` (sketch hints), `runtime` (compile, memory layout) and `settings` (run settings);
- `weights/`: files <-> modules (checkpoints, releases and downloads, LoRA, conversion);
- `models/`: the networks, their frozen config and the noise schedule;
- `frames`: images <-> tensors.
"""
