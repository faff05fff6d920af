"""ComfyUI's whole MODEL toolbox on the native ToonCrafter MODEL (real ComfyUI 0.3.64, CPU, tiny
fixture): every node that takes a MODEL and gives one back applies (the frames change, and equal a
reference where the node has a formula), or is refused with our one-line message. Nothing is skipped
and nothing is silently ignored."""

from __future__ import annotations

import pytest
from comfy_harness import run_in_comfy
from toolbox_cases import APPLIES, CASES, NOT_APPLICABLE, REFUSED

# A node that applies moves the tiny fixture's latents by far more than this (the smallest, ModelComputeDtype
# bf16 against fp32, by ~0.1); rounding alone moves them by less than 1e-6.
CHANGED = 1e-3

MATRIX = """
    import asyncio, json
    sys.path.insert(0, {tests!r})
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    from toolbox_cases import CASES
    from toolbox_driver import Fixture, context_windows, merge_reference, other_family_merge, references, run_case
    fx = Fixture(handle, folder, {tests!r})
    out = {{"cases": {{name: run_case(fx, name, case) for name, case in CASES.items()}}}}
    out["references"] = references(fx, CASES)
    out["windows"] = context_windows(fx, handle)
    out["other_family_merge"] = other_family_merge(fx)
    out["merge_reference"] = merge_reference(fx)
    print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def matrix() -> dict:
    return run_in_comfy(MATRIX, timeout=1800)


def _model_in_and_out(info: dict) -> bool:
    inputs = [spec[0] for section in ("required", "optional") for spec in info["input"].get(section, {}).values()]
    return "MODEL" in inputs and "MODEL" in info["output"]


def test_every_comfyui_node_from_model_to_model_is_in_the_matrix(comfy_server):
    """The list comes from the running server, so a newer ComfyUI's additions fail here until classified."""
    info = comfy_server.object_info()
    listed = {name for name, entry in info.items() if _model_in_and_out(entry)}
    assert listed == set(CASES), (sorted(listed - set(CASES)), sorted(set(CASES) - listed))


@pytest.mark.parametrize("name", sorted(CASES))
def test_node_applies_or_is_refused(matrix, name):
    case, result = CASES[name], matrix["cases"][name]
    assert case.kind in (APPLIES, REFUSED) or (case.kind == NOT_APPLICABLE and case.note)
    if case.kind == REFUSED:
        assert result.get("error") == "InputError", result
        assert case.message in result["message"] and "\n" not in result["message"], result
        return
    assert "error" not in result, result
    assert result["finite"], result
    if name == "TorchCompileModel":  # the eager backend runs the same kernels: it must have traced the UNet
        assert result["compiled_graphs"] >= 1 and result["graph_breaks"] == 0, result
    else:
        assert result["rel"] > CHANGED, result


@pytest.mark.parametrize("name", ["EasyCache", "LazyCache"])
def test_step_caches_skip_unet_passes(matrix, name):
    result = matrix["cases"][name]
    assert result["passes"] < result["base_passes"], result


@pytest.mark.parametrize("name", ["PerturbedAttentionGuidance", "SelfAttentionGuidance", "PerpNeg"])
def test_guidance_nodes_run_their_extra_pass(matrix, name):
    result = matrix["cases"][name]
    assert result["passes"] == 2 * result["base_passes"], result


@pytest.mark.parametrize(
    "name", ["FreeU", "FreeU_V2", "UNetSelfAttentionMultiply", "UNetCrossAttentionMultiply", "UNetTemporalAttentionMultiply"]
)
def test_node_equals_its_formula_on_toon_crafters_blocks(matrix, name):
    """FreeU against its formula applied by PyTorch hooks on the UNet's output blocks; the attention
    multipliers against the weights scaled by hand (UNetTemporalAttentionMultiply's temporal slider
    reaches the temporal transformers)."""
    assert matrix["references"][name] < 1e-5, matrix["references"]


def test_context_windows_sample_window_sized_batches(matrix):
    windows = matrix["windows"]
    full, seen = windows["full_frames_seen"], windows["window_frames_seen"]
    frames = full[0] // 2
    assert set(full) == {2 * frames}
    assert set(seen) == {frames} and len(seen) > len(full), windows
    assert windows["finite"] and windows["windowed_vs_full"] > CHANGED, windows
    # Sketch guidance under the windows: the encoder gets each window's frames, and the sketches steer.
    assert set(windows["sketch_frames_seen"]) == {frames} and windows["sketched_vs_windowed"] > CHANGED, windows


def test_context_windows_over_another_axis_are_refused(matrix):
    message = matrix["windows"]["wrong_dim"]
    assert message and message.startswith("InputError") and "dim to 2" in message, message


def test_a_merge_patches_every_unet_weight_to_the_weighted_sum_of_the_two_models(matrix):
    merge = matrix["merge_reference"]
    assert merge["merged_names"] == merge["weights"] and merge["differ"] > 0, merge
    assert merge["max_error_ulps"] <= 1.0, merge  # rounding to the stored dtype only


def test_merging_a_model_of_another_family_is_refused(matrix):
    message = matrix["other_family_merge"]
    assert message.startswith("InputError") and "not a ToonCrafter model" in message, message


def test_docs_show_the_matrix():
    from helpers import REPO
    from toolbox_cases import markdown_table

    assert markdown_table() in (REPO / "docs" / "native-model.md").read_text()
