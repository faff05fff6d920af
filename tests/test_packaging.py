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


def test_a_clone_installs_the_core_library_and_the_tooncrafter_command(tmp_path):
    """`pip install "<clone>[eval]"` in a fresh virtual environment (the machine's packages visible, so
    nothing large is downloaded) gives `tooncrafter` and `import tooncrafter_core` from any folder."""
    import os
    import shutil
    import subprocess
    import sys

    # A copy, as a clone is: an in-tree build leaves build/ behind in the folder it installs from.
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "tests",
                                                                   "benchmarks", "workflows"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python, elsewhere = venv / "bin" / "python", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{clone}[eval]"], capture_output=True, text=True,
                             cwd=elsewhere, env=env)
    assert install.returncode == 0, install.stderr[-2000:]
    helped = subprocess.run([str(venv / "bin" / "tooncrafter"), "--help"], capture_output=True, text=True, cwd=elsewhere,
                            env=env)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: tooncrafter ")
    for verb in ("interpolate", "animate", "colorize", "train-lora"):
        assert verb in helped.stdout
    where = subprocess.run([str(python), "-c", "import tooncrafter_core, nodes; print(tooncrafter_core.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    # The core is installed; the node pack is not (ComfyUI loads it from custom_nodes).
    assert "No module named 'nodes'" in where.stderr
    imported = subprocess.run([str(python), "-c", "import tooncrafter_core; print(tooncrafter_core.__file__)"],
                              capture_output=True, text=True, cwd=elsewhere, env=env)
    assert imported.returncode == 0 and str(venv) in imported.stdout, imported.stderr


def test_ci_install_without_the_shared_folder_fails_in_one_line_naming_it(tmp_path):
    import os
    import subprocess

    run = subprocess.run(["bash", str(REPO / ".ci" / "install.sh")], capture_output=True, text=True,
                         env={**os.environ, "TOONCRAFTER_SHARED": str(tmp_path / "missing")})
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert f"{tmp_path / 'missing'} (comfyui/, reference/)" in run.stderr and "TOONCRAFTER_SHARED" in run.stderr


def test_github_runs_the_same_ci_script_and_publishes_on_a_version_change():
    import yaml

    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    assert set(ci[True]) == {"push", "pull_request"}  # YAML reads the key `on` as True
    steps = ci["jobs"]["ci"]["steps"]
    assert [s["run"] for s in steps if "run" in s][-1] == "bash .ci/run"
    publish = yaml.safe_load((REPO / ".github" / "workflows" / "publish.yml").read_text())
    assert publish[True]["push"]["paths"] == ["pyproject.toml"]
    action = next(s for s in publish["jobs"]["publish"]["steps"] if "Comfy-Org/publish-node-action" in s.get("uses", ""))
    assert action["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"
    assert "version" in action["if"]
    assert "REGISTRY_ACCESS_TOKEN" in (REPO / "docs" / "development.md").read_text()


def test_the_pack_registers_no_http_routes():
    """The pack adds no server endpoints (docs/development.md says so): nothing reaches PromptServer's routes."""
    import re

    for path in [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"PromptServer|\.routes\b|add_route|aiohttp", text), path.name
