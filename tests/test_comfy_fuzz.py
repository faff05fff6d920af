"""Fuzzing the nodes through the real ComfyUI (hypothesis, a fixed seed): odd sizes, frame counts, strides,
seeds at their limits, prompts (empty, 10k characters, unicode, control characters) and odd keyframe files
(1x1, CMYK, 16-bit, animated, EXIF-rotated, truncated, a decompression bomb). Each prompt ends in frames
that are finite and not all black, or in one clean error line from the node that cannot take the input.

The example count is in the test's name (ci profile); TOONCRAFTER_FUZZ_PROFILE=long runs ten times as many.
"""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from test_comfy_nodes import _seed_prompt
from test_fuzz import _png_header, examples

PROMPTS = st.one_of(st.just(""), st.just("a ball " * 1500), st.text(max_size=60),
                    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=20),
                    st.just("一只猫跳起来 🐱 ünïcödé"))


@st.composite
def keyframe_files(draw):
    kind = draw(st.sampled_from(["plain", "plain", "1x1", "cmyk", "16bit", "animated", "rotated", "truncated", "bomb"]))
    if kind == "bomb":
        return _png_header(100_000, 100_000), kind
    size = (1, 1) if kind == "1x1" else (draw(st.integers(8, 90)), draw(st.integers(8, 90)))
    rng = np.random.default_rng(draw(st.integers(0, 999)))
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buffer, options, fmt = io.BytesIO(), {}, "PNG"
    if kind == "cmyk":
        im, fmt = im.convert("CMYK"), "TIFF"
    elif kind == "16bit":
        im = im.convert("L").convert("I;16")
    elif kind == "animated":
        fmt, options = "GIF", {"save_all": True, "append_images": [im.rotate(90)]}
    elif kind == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 8
        fmt, options = "JPEG", {"exif": exif.tobytes()}
    im.save(buffer, format=fmt, **options)
    data = buffer.getvalue()
    return (data[: len(data) // 2], kind) if kind == "truncated" else (data, kind)


@examples(12)
@given(width=st.sampled_from([64, 128, 72]), height=st.sampled_from([64, 96, 100]),
       frames=st.sampled_from([0, 2, 3, 7, 64]), stride=st.sampled_from([0, 1, 100]),
       seed=st.sampled_from([0, 2**64 - 1, 123]), prompt=PROMPTS, negative=PROMPTS, start=keyframe_files())
def test_conditioning_and_sampler_inputs_12_examples(comfy_server, width, height, frames, stride, seed, prompt, negative,
                                                      start):
    data, kind = start
    name = f"fuzz_{abs(hash((data, kind))) % 10**8}.{'png' if kind != 'animated' else 'gif'}"
    (comfy_server.root / "input" / name).write_bytes(data)
    api = _seed_prompt(seed)
    api["2"]["inputs"]["image"] = name
    api["4"]["inputs"].update(width=width, height=height, frames=frames, frame_stride=stride, prompt=prompt,
                              negative_prompt=negative)
    api["5"]["inputs"]["steps"] = 2
    entry = comfy_server.wait_for(comfy_server.queue_prompt(api), timeout=600, check=False)
    status = entry["status"]
    if status.get("status_str") == "success":
        images = [np.asarray(Image.open(io.BytesIO(comfy_server.view(f)))) for out in entry["outputs"].values()
                  for f in out.get("images", [])]
        assert images and all(np.isfinite(i).all() for i in images)
        assert max(i.max() for i in images) > 0, "black frames"
        assert kind not in ("truncated", "bomb"), "a broken file ran"
        return
    errors = [data for event, data in status["messages"] if event == "execution_error"]
    assert errors, status
    message = str(errors[0]["exception_message"]).strip()
    assert message and "\n" not in message and "Traceback" not in message, message
    assert errors[0]["node_type"].startswith(("ToonCrafter", "LoadImage")), errors[0]
