"""The conversion CLI, SIGKILLed at a chosen point: `killed_conversion.py POINT CLI-ARGS...` (test_conversion.py).

Points: `mid-shard` (while the third LLM tensor is read, output shards half written), `before-config` (every
other file written), `between-renames` (the old output moved aside, the new one not yet in place).
"""

import os
import signal
import sys
from pathlib import Path

from hf_instructblip import InstructBlipConfig
from hf_instructblip.conversion import __main__ as cli
from hf_instructblip.conversion.loading import SafetensorsFile


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def on_call(function, number: int):
    """`function`, except that its `number`-th call kills the process."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(None)
        return die() if len(calls) == number else function(*args, **kwargs)

    return wrapper


point, argv = sys.argv[1], sys.argv[2:]
if point == "mid-shard":
    SafetensorsFile.read = on_call(SafetensorsFile.read, 3)
elif point == "before-config":
    InstructBlipConfig.save_pretrained = die
elif point == "between-renames":
    Path.rename = on_call(Path.rename, 2)
else:
    raise SystemExit(f"unknown point {point!r}")
cli.main(argv)
raise SystemExit("the conversion finished before the kill point")
