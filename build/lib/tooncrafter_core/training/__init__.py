"""Training on top of the inference floor: LoRA fine-tuning and distillation into a smaller student.

`objective` is the original's forward process and the losses, `encodings` the frozen parts computed
once per item (and cached on disk), `adapters` the PEFT LoRA layers and their files, `loop` the
optimisation loop every command shares (mixed precision, checkpoints and bit-exact resume, logs,
validation and samples, Ctrl-C), `lora` and `distill` the two tasks.
"""
