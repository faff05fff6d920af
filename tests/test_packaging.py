"""What ComfyUI Manager / the registry read: pyproject, requirements, node_list, README claims."""

import json
import re

import tomllib
from helpers import REPO
from test_comfy_nodes import DOCUMENTED

from tooncrafter_core.weights import catalog


def test_pyproject_has_project_and_comfy_sections():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    for key in ("name", "version", "description", "license", "urls", "dependencies"):
        assert project.get(key), key
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy.get(key), key
    assert not any(d.split(">")[0].split("=")[0].strip() == "torch" for d in project["dependencies"])


def test_requirements_leave_torch_to_comfyui_and_match_pyproject():
    reqs = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    names = {re.split(r"[<>=!~ ]", r)[0].lower() for r in reqs}
    assert "torch" not in names and "xformers" not in names and "kornia" not in names
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert names == {re.split(r"[<>=!~ ]", d)[0].lower() for d in deps}


def test_node_list_names_every_node():
    assert set(json.loads((REPO / "node_list.json").read_text())) == set(DOCUMENTED)


def test_readme_lists_every_release_and_node_and_the_test_command():
    readme = (REPO / "README.md").read_text()
    for entry in catalog.RELEASED:
        assert entry.name in readme and entry.size in readme
    for name in json.loads((REPO / "node_list.json").read_text()).values():
        assert name in readme
    ci = (REPO / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command == "python3 -m pytest -q tests" and command in readme
