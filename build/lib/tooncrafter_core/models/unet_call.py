"""What one UNet forward passes down its blocks (`UNetCall`): the per-frame timestep embedding, the
cross-attention context, the clip's batch and frame count, control residuals and the patch points a
host hooks into (`UNetHooks`).

The patch points are ComfyUI's (`transformer_options` in its `openaimodel.py` and `attention.py`), typed
and without ComfyUI: a host wraps its own functions into these signatures. Frames are folded into the
batch, `(b t)`, as in ComfyUI's SD-style video models, and these are the shapes a patch sees:

- attention patches reach the *spatial* transformers only (self-attention over a frame's h*w tokens,
  then cross-attention to the prompt and the frame's image tokens); the temporal transformers attend
  along the frames at each pixel and take no patches, so a patch written for image tokens (token
  merging, tiling) never merges or tiles frames;
- attn1 input patch `(n, context, value, site) -> (n, context, value)`: n, context, value
  ((b t), h*w, c), the normed tokens before the q/k/v projections;
- attn2 input patch: n ((b t), h*w, c); context, value ((b t), 77 + k, d): the clip's 77 text tokens,
  then the image tokens the frame attends to (k = 16 per frame, or every frame's when they are shared).
  A patch must keep the 77 text tokens first: ToonCrafter splits them off again for its two
  cross-attentions (`to_k`/`to_v` for text, `to_k_ip`/`to_v_ip` for the image);
- replacement `(q, k, v, site) -> out`: q ((b t), n, heads*dim_head) and k, v ((b t), m,
  heads*dim_head) after the projections, returning the attention output before `to_out`. For attn2 it
  is called twice, with the text keys and with the image keys, and the two outputs are summed as the
  original sums its two cross-attentions. Keys with another batch than q are split evenly over q's
  batch, as ComfyUI's attention does;
- output patch `(out, site) -> out`: the attention output after `to_out`, ((b t), h*w, c);
- `middle` patch `(x, site) -> x`: the tokens after the self-attention residual;
- block patches: `input` / `input_after_skip` `(h, site) -> h` with h ((b t), c, h, w) after input
  block i (before / after it is kept as a skip connection), and `output` `(h, skip, site) -> (h, skip)`
  before output block i concatenates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional, Sequence

import torch

# ComfyUI's block keys: ("input", i) for input_blocks[i], ("middle", 0), ("output", i).
BlockKey = tuple[str, int]


@dataclass(frozen=True)
class FrameContext:
    """The spatial cross-attention context of a clip of `frames` frames: text tokens once per clip
    (b m c) and image tokens per frame ((b t) k c) or per clip (b k c), all contiguous."""

    text: torch.Tensor
    image: torch.Tensor
    frames: int

    def per_frame(self) -> torch.Tensor:
        """((b t), m + k, c): each frame's text tokens then the image tokens it attends to."""
        text = self.text.repeat_interleave(self.frames, dim=0)
        image = self.image
        if image.shape[0] != text.shape[0]:
            image = image.repeat_interleave(self.frames, dim=0)
        return torch.cat([text, image.to(text)], dim=1)


@dataclass(frozen=True)
class AttentionSite:
    """Where an attention patch is called: ComfyUI's block key and transformer index, which attention
    (`attn1` self, `attn2` cross), the layer's heads, and the spatial transformer's input shape."""

    block: BlockKey
    index: int  # the transformer block inside the spatial transformer (ComfyUI's block_index)
    transformer_index: int  # spatial transformers before this one in a forward pass
    which: str
    heads: int
    dim_head: int
    activations: tuple[int, ...]  # ((b t), c, h, w)

    @property
    def key(self) -> tuple[str, int, int]:
        """ComfyUI's key of a replacement for this layer: (block name, block id, index)."""
        return (*self.block, self.index)


AttentionInputPatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionSite], tuple]
AttentionReplacement = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionSite], torch.Tensor]
AttentionOutputPatch = Callable[[torch.Tensor, AttentionSite], torch.Tensor]
BlockPatch = Callable[[torch.Tensor, BlockKey], torch.Tensor]
OutputBlockPatch = Callable[[torch.Tensor, torch.Tensor, BlockKey], tuple]


@dataclass(frozen=True)
class AttentionHooks:
    """The patch points of one attention (attn1 or attn2) of every spatial transformer block."""

    inputs: tuple[AttentionInputPatch, ...] = ()
    # Keyed (block name, block id, index) for one layer or (block name, block id) for a block's layers.
    replacements: Mapping[tuple, AttentionReplacement] = field(default_factory=dict)
    outputs: tuple[AttentionOutputPatch, ...] = ()

    def replacement(self, site: AttentionSite) -> Optional[AttentionReplacement]:
        if not self.replacements:
            return None
        return self.replacements.get(site.key, self.replacements.get(site.block))

    def __bool__(self) -> bool:
        return bool(self.inputs or self.replacements or self.outputs)


@dataclass(frozen=True)
class UNetHooks:
    """Every patch point of a forward pass (see the module docstring for what each one receives)."""

    attn1: AttentionHooks = AttentionHooks()
    attn2: AttentionHooks = AttentionHooks()
    middle: tuple[Callable[[torch.Tensor, AttentionSite], torch.Tensor], ...] = ()
    input_block: tuple[BlockPatch, ...] = ()
    input_block_after_skip: tuple[BlockPatch, ...] = ()
    output_block: tuple[OutputBlockPatch, ...] = ()

    @property
    def attention(self) -> bool:
        """Whether the spatial transformer blocks have anything to call."""
        return bool(self.attn1 or self.attn2 or self.middle)


NO_HOOKS = UNetHooks()


@dataclass(frozen=True)
class ControlResiduals:
    """Residuals a control network adds: to input block i's output (`inputs[i]`), to skip connection i
    (`skips[i]`, in input-block order) and to the middle block's output; None where it adds nothing."""

    skips: Sequence[Optional[torch.Tensor]] = ()
    middle: Optional[torch.Tensor] = None
    inputs: Sequence[Optional[torch.Tensor]] = ()

    @classmethod
    def from_list(cls, residuals: Sequence[torch.Tensor]) -> "ControlResiduals":
        """One residual per skip connection, then the middle block's (the sketch encoder's order)."""
        return cls(skips=list(residuals[:-1]), middle=residuals[-1])


@dataclass(frozen=True)
class UNetCall:
    """One forward pass as its blocks see it: emb ((b t) e), the context, the clip's batch and frame
    count, the hooks, and the key of the block being run."""

    emb: torch.Tensor
    context: FrameContext
    batch: int
    frames: int
    hooks: UNetHooks = NO_HOOKS
    block: BlockKey = ("input", 0)

    def at(self, name: str, index: int) -> "UNetCall":
        return replace(self, block=(name, index))
