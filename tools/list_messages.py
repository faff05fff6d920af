"""Lists every user-facing error message of the core and the nodes: each `raise SomeError("...")` whose
message is a literal or an f-string, with its opening words (the longest literal run, from the start).

    python tools/list_messages.py [--missing docs/troubleshooting.md]

tests/test_messages.py checks that docs/troubleshooting.md quotes each opening.
"""

from __future__ import annotations

import argparse
import ast
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("tooncrafter_core", "nodes")
# Exceptions whose message reaches a user: the CLI prints these as `error: ...`, ComfyUI shows them.
USER_ERRORS = {
    "InputError", "ValueError", "CheckpointError", "LoraError", "DownloadError", "ConfigError", "DatasetError",
    "BatchError", "EvaluationError", "SafetensorsError", "FloatingPointError", "SamplingOverflowError",
    "FileNotFoundError", "MetricUnavailable", "RuntimeError", "TypeError", "ModuleNotFoundError",
}
MIN_WORDS = 3


@dataclass(frozen=True)
class Message:
    path: str
    line: int
    error: str
    opening: str  # the words a reader sees first, placeholders cut off
    text: str  # the whole message, placeholders as '…'


def opening(node: ast.expr) -> str | None:
    """The message's literal text up to its first placeholder (or, when it opens with one, its first
    literal run of at least MIN_WORDS words); None when it has no such text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        parts = [node.value]
    elif isinstance(node, ast.JoinedStr):
        parts, current = [], ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                current += value.value
            else:
                parts.append(current)
                current = ""
        parts.append(current)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return opening(node.left)
    else:
        return None
    texts = [re.sub(r"^[^\w'\"$-]+|[\s:;,(]+$", "", " ".join(part.split())) for part in parts]
    for text in texts:
        if len(text.split()) >= MIN_WORDS:
            return text
    # Short literal runs only: the longest of two words or more.
    longest = max(texts, key=lambda t: len(t.split()), default="")
    return longest if len(longest.split()) >= 2 else None


def template(node: ast.expr) -> str:
    """The whole message with each placeholder as '…'."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return template(node.left) + template(node.right)
    return "…"


def messages(root: Path = ROOT) -> list[Message]:
    found = []
    for package in SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                    continue
                func = node.exc.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in USER_ERRORS:
                    text = opening(node.exc.args[0])
                    if text:
                        found.append(Message(path.relative_to(root).as_posix(), node.lineno, name, text,
                                             template(node.exc.args[0])))
    return sorted(found, key=lambda m: (m.path, m.line))


def quoted(text: str, page: str) -> bool:
    """Whether `page` quotes the opening (whitespace, backticks and quote styles aside)."""
    squash = lambda s: re.sub(r"\s+", " ", s.replace("`", "").replace("\\|", "|"))
    return squash(text) in squash(page)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--missing", type=Path, help="list only the messages this page does not quote")
    args = parser.parse_args()
    page = args.missing.read_text() if args.missing else None
    for m in messages():
        if page is None or not quoted(m.opening, page):
            logging.info("%s:%d %s: %s", m.path, m.line, m.error, m.opening)
    return 0


if __name__ == "__main__":
    sys.exit(main())
