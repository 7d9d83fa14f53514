"""Runs a script of `tests/scripts/` in fresh processes, alone or as several torchrun ranks (gloo on CPU)."""

import os
import subprocess
import sys

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


def run_script(name: str, *args: str, processes: int = 1, timeout: float = 180) -> None:
    source = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    subprocess.run([*launcher, os.path.join(SCRIPTS, name), *args], check=True, env=env, timeout=timeout)
