"""The import contract of pyproject.toml covers the whole core: every module and sub-package sits in
a layer, so none can import upward unnoticed (lint-imports, run by .ci/run, checks the layers)."""

import pkgutil
import re

import tomllib
from helpers import REPO

import tooncrafter_core


def test_every_module_of_the_core_is_in_a_layer_of_the_contract():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in re.split(r"[:|]", layer)}
    modules = {f"tooncrafter_core.{m.name}" for m in pkgutil.iter_modules(tooncrafter_core.__path__)}
    assert modules - named == set(), "modules outside every layer"
    assert named - modules == set(), "layers naming modules that do not exist"
    kinds = {c["type"] for c in config["contracts"]}
    assert {"layers", "acyclic_siblings", "forbidden"} <= kinds
