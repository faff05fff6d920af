"""The ComfyUI test harness itself, proven on ComfyUI's built-in nodes only."""

import copy
import io
import json
from pathlib import Path

import pytest
from comfy_harness import (
    PACK_NAME,
    ComfyError,
    ComfyServer,
    WorkflowError,
    pack_import_errors,
    widget_value_names,
    workflow_to_api,
)
from PIL import Image

# object_info entries as ComfyUI 0.3.64 serves them: V1 nodes use a list for combos, V3 nodes
# (comfy_api) use ["COMBO", {"options": [...]}]; both carry input_order.
OBJECT_INFO = {
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "seed": ["INT", {"default": 0, "control_after_generate": True}],
                "steps": ["INT", {"default": 20}],
                "cfg": ["FLOAT", {"default": 8.0}],
                "sampler_name": [["euler", "ddim"]],
                "scheduler": [["normal", "karras"]],
                "positive": ["CONDITIONING"],
                "negative": ["CONDITIONING"],
                "latent_image": ["LATENT"],
                "denoise": ["FLOAT", {"default": 1.0}],
            }
        },
        "input_order": {
            "required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                         "positive", "negative", "latent_image", "denoise"]
        },
    },
    "SaveVideo": {
        "input": {
            "required": {
                "video": ["VIDEO"],
                "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                "format": ["COMBO", {"default": "auto", "options": ["auto", "mp4"]}],
                "codec": ["COMBO", {"default": "auto", "options": ["auto", "h264"]}],
            },
            "hidden": {"prompt": ["PROMPT"]},
        },
        "input_order": {"required": ["video", "filename_prefix", "format", "codec"], "hidden": ["prompt"]},
    },
    "Frontendish": {
        "input": {
            "required": {
                "image": [["a.png", "b.png"], {"image_upload": True}],
                "noise_seed": ["INT", {}],
                "mode": [["x", "y"], {"control_after_generate": True}],
                "text": ["STRING", {"forceInput": True}],
            },
            "optional": {"flag": ["BOOLEAN", {"default": False}]},
        },
        "input_order": {"required": ["noise_seed", "image", "mode", "text"], "optional": ["flag"]},
    },
    "EmptyLatentImage": {
        "input": {"required": {"width": ["INT", {}], "height": ["INT", {}], "batch_size": ["INT", {}]}},
        "input_order": {"required": ["width", "height", "batch_size"]},
    },
}


def _node(node_id, node_type, widgets=(), inputs=(), outputs=(), mode=0):
    """A node as the frontend saves it; `inputs`/`outputs` are (name, type, link(s)) triples, and
    an input named like a widget is saved with its `widget` entry."""
    saved_inputs = []
    for name, slot_type, link in inputs:
        slot = {"name": name, "type": slot_type, "link": link}
        if slot_type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            slot["widget"] = {"name": name}
        saved_inputs.append(slot)
    return {
        "id": node_id, "type": node_type, "pos": [node_id * 250, 100], "size": [220, 120],
        "flags": {}, "order": node_id, "mode": mode, "properties": {},
        "inputs": saved_inputs,
        "outputs": [{"name": name, "type": slot_type, "links": list(links)} for name, slot_type, links in outputs],
        "widgets_values": list(widgets),
    }


def _workflow(nodes, links):
    return {
        "last_node_id": max(node["id"] for node in nodes),
        "last_link_id": max((link[0] for link in links), default=0),
        "nodes": nodes, "links": [list(link) for link in links],
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }


def _sampler_workflow(widgets):
    nodes = [
        _node(1, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT", [1])]),
        _node(2, "KSampler", widgets, inputs=[("latent_image", "LATENT", 1)]),
    ]
    return _workflow(nodes, [(1, 1, 0, 2, 8, "LATENT")])


def _builtin_workflow():
    """PrimitiveNode -> EmptyImage.width; EmptyImage -> Reroute -> ImageInvert -> PreviewImage and
    Reroute -> bypassed ImageInvert -> SaveImage; plus a muted node and a Note."""
    nodes = [
        _node(1, "PrimitiveNode", [48, "fixed"], outputs=[("INT", "INT", [1])]),
        _node(2, "EmptyImage", [512, 32, 1, 0], inputs=[("width", "INT", 1)],
              outputs=[("IMAGE", "IMAGE", [2, 7])]),
        _node(3, "Reroute", inputs=[("", "*", 2)], outputs=[("", "IMAGE", [3, 4])]),
        _node(4, "ImageInvert", inputs=[("image", "IMAGE", 3)], outputs=[("IMAGE", "IMAGE", [5])]),
        _node(5, "PreviewImage", inputs=[("images", "IMAGE", 5)]),
        _node(6, "ImageInvert", inputs=[("image", "IMAGE", 4)], outputs=[("IMAGE", "IMAGE", [6])], mode=4),
        _node(7, "SaveImage", ["harness_test"], inputs=[("images", "IMAGE", 6)]),
        _node(8, "ImageInvert", inputs=[("image", "IMAGE", 7)], outputs=[("IMAGE", "IMAGE", [])], mode=2),
        _node(9, "Note", ["UI only"]),
    ]
    nodes[0]["outputs"][0]["widget"] = {"name": "width"}
    nodes[2]["properties"] = {"showOutputText": False, "horizontal": False}
    links = [
        (1, 1, 0, 2, 0, "INT"), (2, 2, 0, 3, 0, "*"), (3, 3, 0, 4, 0, "IMAGE"),
        (4, 3, 0, 6, 0, "IMAGE"), (5, 4, 0, 5, 0, "IMAGE"), (6, 6, 0, 7, 0, "IMAGE"),
        (7, 2, 0, 8, 0, "IMAGE"),
    ]
    return _workflow(nodes, links)


BUILTIN_API = {
    "2": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 0}},
    "4": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "harness_test", "images": ["2", 0]}},
}


# --- converter, no server --------------------------------------------------------------------

def test_widget_value_names_follow_the_frontend_widget_rules():
    assert widget_value_names(OBJECT_INFO["Frontendish"]) == [
        "noise_seed", None,  # seed-named INT: control_after_generate by default
        "image",
        "mode", None, None,  # combo with control: control value and filter list
        "flag",
        None,  # upload button, after every other widget
    ]
    assert widget_value_names(OBJECT_INFO["SaveVideo"]) == ["filename_prefix", "format", "codec"]


def test_converter_skips_control_after_generate_values():
    prompt = workflow_to_api(_sampler_workflow([7, "randomize", 4, 7.5, "ddim", "karras", 0.5]), OBJECT_INFO)
    assert prompt["2"] == {
        "class_type": "KSampler",
        "inputs": {"seed": 7, "steps": 4, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "karras",
                   "denoise": 0.5, "latent_image": ["1", 0]},
    }
    assert prompt["1"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}


@pytest.mark.parametrize("widgets", [
    [7, 4, 7.5, "ddim", "karras", 0.5],  # control value missing: everything would shift by one
    [7, "fixed", 4, 7.5, "ddim", "karras", 0.5, 1],
])
def test_converter_rejects_widget_count_mismatch(widgets):
    with pytest.raises(WorkflowError, match=r"node 2 \(KSampler\): \d+ widget values"):
        workflow_to_api(_sampler_workflow(widgets), OBJECT_INFO)


def test_converter_rejects_unknown_types_and_dangling_links():
    workflow = _sampler_workflow([7, "fixed", 4, 7.5, "ddim", "karras", 0.5])
    unknown = copy.deepcopy(workflow)
    unknown["nodes"][0]["type"] = "DoesNotExistNode"
    with pytest.raises(WorkflowError, match="DoesNotExistNode"):
        workflow_to_api(unknown, OBJECT_INFO)
    dangling = copy.deepcopy(workflow)
    dangling["links"][0][1] = 99
    with pytest.raises(WorkflowError, match="missing node 99"):
        workflow_to_api(dangling, OBJECT_INFO)


def test_converter_drops_inputs_fed_by_muted_nodes():
    workflow = _sampler_workflow([7, "fixed", 4, 7.5, "ddim", "karras", 0.5])
    workflow["nodes"][0]["mode"] = 2
    prompt = workflow_to_api(workflow, OBJECT_INFO)
    assert set(prompt) == {"2"}
    assert "latent_image" not in prompt["2"]["inputs"]


def test_pack_import_errors_finds_only_this_pack():
    log_text = "\n".join([
        "Cannot import /tmp/x/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'",
        f"Cannot import /tmp/x/custom_nodes/{PACK_NAME} module for custom nodes: boom",
        f"   0.0 seconds (IMPORT FAILED): /tmp/x/custom_nodes/{PACK_NAME}",
        f"   0.1 seconds: /tmp/x/custom_nodes/{PACK_NAME}-extras",
        "IMPORT FAILED: nodes_audio.py",
        f"Error while calling comfy_entrypoint in /tmp/x/custom_nodes/{PACK_NAME}: 'tooncrafter'",
    ])
    assert pack_import_errors(log_text) == [
        f"Cannot import /tmp/x/custom_nodes/{PACK_NAME} module for custom nodes: boom",
        f"0.0 seconds (IMPORT FAILED): /tmp/x/custom_nodes/{PACK_NAME}",
        f"Error while calling comfy_entrypoint in /tmp/x/custom_nodes/{PACK_NAME}: 'tooncrafter'",
    ]


# --- a real server ---------------------------------------------------------------------------

def test_server_start_failure_shows_the_log(tmp_path):
    server = ComfyServer(tmp_path, extra_args=("--no-such-flag",))
    with pytest.raises(ComfyError, match="(?s)exited with code 2.*no-such-flag"):
        server.start()


def test_server_serves_builtin_and_v3_node_schemas(comfy_server):
    info = comfy_server.object_info()
    assert info["EmptyImage"]["input"]["required"]["width"][0] == "INT"
    # V3 (comfy_api) nodes: same shape, combos spelled as COMBO with an options list.
    assert info["SaveVideo"]["input"]["required"]["format"][0] == "COMBO"
    assert widget_value_names(info["SaveVideo"]) == ["filename_prefix", "format", "codec"]
    assert widget_value_names(info["KSampler"])[:2] == ["seed", None]
    assert list(comfy_server.object_info("ImageInvert")) == ["ImageInvert"]


def test_tiny_model_is_staged(comfy_server):
    staged = sorted(path.name for path in comfy_server.tooncrafter_models_dir.iterdir())
    assert staged == [
        "DC-Tiny.json", "TC-Tiny.json", "dynamicrafter_tiny_i2v.safetensors", "dynamicrafter_tiny_i2v.yaml",
        "dynamicrafter_tiny_interp.safetensors", "dynamicrafter_tiny_interp.yaml", "tooncrafter_tiny.safetensors",
        "tooncrafter_tiny.yaml",
    ]


def test_builtin_workflow_runs_to_completion(comfy_server):
    prompt = workflow_to_api(_builtin_workflow(), comfy_server.object_info())
    assert prompt == BUILTIN_API
    entry = comfy_server.run(prompt, timeout=60)
    assert entry["status"]["status_str"] == "success"
    preview = entry["outputs"]["5"]["images"]
    saved = entry["outputs"]["7"]["images"]
    assert preview[0]["type"] == "temp" and saved[0]["type"] == "output"
    inverted = Image.open(io.BytesIO(comfy_server.view(preview[0])))
    passed_through = Image.open(io.BytesIO(comfy_server.view(saved[0])))
    # width comes from the PrimitiveNode; the bypassed invert must not have run.
    assert inverted.size == passed_through.size == (48, 32)
    assert inverted.convert("L").getextrema() == (255, 255)
    assert passed_through.convert("L").getextrema() == (0, 0)


def test_invalid_prompt_is_refused(comfy_server):
    prompt = copy.deepcopy(BUILTIN_API)
    prompt["2"]["inputs"]["width"] = 0  # below EmptyImage's min of 1
    with pytest.raises(ComfyError, match="width"):
        comfy_server.queue_prompt(prompt)


def test_failing_execution_is_reported(comfy_server):
    prompt = copy.deepcopy(BUILTIN_API)
    # Passes validation; SaveImage refuses the path only when it runs.
    prompt["7"]["inputs"]["filename_prefix"] = "../escape"
    with pytest.raises(ComfyError, match="outside the output folder"):
        comfy_server.run(prompt, timeout=60)


def test_interrupt_and_log_capture(comfy_server):
    comfy_server.interrupt()
    assert "ComfyUI version: 0.3.64" in comfy_server.log_text()


# --- the real frontend -----------------------------------------------------------------------

def test_frontend_loads_builtin_workflow_like_the_converter(comfy_frontend, comfy_server, tmp_path):
    workflow = _builtin_workflow()
    assert comfy_frontend.load_workflow(workflow) == []
    frontend_prompt = comfy_frontend.graph_to_prompt()
    for node in frontend_prompt.values():
        node.pop("_meta")
    assert frontend_prompt == workflow_to_api(workflow, comfy_server.object_info())
    comfy_frontend.screenshot(tmp_path / "builtin.png")
    assert (tmp_path / "builtin.png").stat().st_size > 0


def test_frontend_reports_missing_node_type(comfy_frontend):
    workflow = _builtin_workflow()
    workflow["nodes"][3]["type"] = "DoesNotExistNode"
    problems = comfy_frontend.load_workflow(workflow)
    assert any("DoesNotExistNode" in p and "dialog" in p for p in problems), problems
    assert any("DoesNotExistNode is not registered" in p for p in problems), problems


def test_frontend_reports_stale_widget_values(comfy_frontend):
    workflow = _builtin_workflow()
    workflow["nodes"][1]["widgets_values"] = [512, 32, 1]
    workflow["nodes"][6]["widgets_values"] = []
    problems = comfy_frontend.load_workflow(workflow)
    assert any("node 2 (EmptyImage): 3 widgets_values for 4 widgets" in p for p in problems), problems
    assert any("node 7 (SaveImage): 0 widgets_values for 1 widgets" in p for p in problems), problems


def test_converter_matches_frontend_on_bundled_templates(comfy_frontend, comfy_server):
    """Official templates that use PrimitiveNode, Reroute, bypassed and muted nodes, LoadImage."""
    import comfyui_workflow_templates

    templates = Path(comfyui_workflow_templates.__file__).parent / "templates"
    object_info = comfy_server.object_info()
    names = ["flux_redux_model_example", "hidream_e1_1", "hunyuan_video_text_to_video",
             "sdxl_refiner_prompt_example"]
    for name in names:
        workflow = json.loads((templates / f"{name}.json").read_text(encoding="utf-8"))
        expected = workflow_to_api(workflow, object_info)
        comfy_frontend.load_workflow(workflow, check_combo_values=False)
        frontend_prompt = comfy_frontend.graph_to_prompt()
        for node in frontend_prompt.values():
            node.pop("_meta")
        assert frontend_prompt == expected, name
