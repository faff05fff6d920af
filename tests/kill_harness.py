"""kill -9 at random moments, cheaply: this process imports the core once and never computes, then
forks each writer run (a CLI verb or a download) and SIGKILLs it after a random delay; the checks of
what was left on disk run in forked children too, so no thread pool ever exists here to break a fork.

    python tests/kill_harness.py WORKDIR WRITER KILLS SEED   (WORKDIR/spec.json describes the writer)

Prints one JSON line: the kill delays, what each kill left (old / new / absent / partial-hidden) and
the final run's exit status. Used by tests/test_kill9.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tooncrafter_core.__main__ as cli  # noqa: E402  (imported before any fork: the children share it)
from tooncrafter_core.weights import catalog  # noqa: E402


def in_child(fn, *args) -> tuple[int, str]:
    """Run fn(*args) in a forked child; its exit status and what it wrote to the pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        status = 1
        try:
            message = fn(*args) or ""
            status = 0
        except BaseException as e:  # the child reports anything, then exits without cleanup
            message = f"{type(e).__name__}: {e}"
        os.write(write, message.encode()[:60000])
        os._exit(status)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def run_writer(spec: dict) -> str:
    os.chdir(spec["cwd"])
    if spec["kind"] == "cli":
        argv = list(spec["argv"])
        resume_when = spec.get("resume_when")  # a folder whose step_* checkpoints mean: continue with --resume
        if resume_when and any(Path(resume_when).glob("step_*")):
            argv.append("--resume")
        code = cli.main(argv)
        if code:
            raise SystemExit(code)
        return ""
    return str(catalog.download(catalog.find(spec["entry"]), spec["folder"]))


def start(spec: dict) -> int:
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            run_writer(spec)
            os._exit(0)
        except BaseException:
            os._exit(1)
    return pid


def check(spec: dict) -> str:
    """What the kill left where a reader looks: the checker module's verdict (raises on a bad state)."""
    sys.path.insert(0, str(REPO / "tests"))
    import kill_checks

    return getattr(kill_checks, spec["check"])(spec)


def main() -> int:
    workdir, writer, kills, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    spec = json.loads((workdir / "spec.json").read_text())[writer]
    # What the writer imports on first use, imported once here: otherwise every forked run pays for it
    # again (peft brings transformers), stretching each run and each kill window. Only what it needs:
    # a larger parent makes every fork slower.
    for module in spec.get("imports", []):
        __import__(module)
    rng = random.Random(seed)
    t0 = time.monotonic()
    code, message = in_child(run_writer, spec["full"])  # one whole run: its length sets the kill window
    length = time.monotonic() - t0
    if code:
        print(json.dumps({"error": f"the uninterrupted run failed: {message}"}))
        return 1
    code, reference = in_child(check, {**spec, "stage": "reference"})
    if code:
        print(json.dumps({"error": f"the uninterrupted run's result is bad: {reference}"}))
        return 1
    delays, states = [], []
    for _ in range(kills):
        # A little past the end too: some kills land after the writer finished (nothing to lose then).
        delay = rng.uniform(0, 1.2 * length)
        pid = start(spec["resume"])
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        code, state = in_child(check, {**spec, "stage": "killed"})
        if code:
            print(json.dumps({"error": f"after a kill at {delay:.2f} s: {state}", "delays": delays}))
            return 1
        delays.append(round(delay, 3))
        states.append(state)
        if state == "new" and spec.get("restart_after_new"):
            os.unlink(spec["restart_after_new"])  # download again: the next kill lands in a transfer too
    code, message = in_child(run_writer, spec["resume"])
    final_code, final = in_child(check, {**spec, "stage": "final"})
    print(json.dumps({"length": round(length, 3), "delays": delays, "states": states, "resume": code,
                      "resume_message": message[-500:], "final": final if final_code == 0 else f"BAD: {final}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
