"""Test session setup: an offline Hub on 127.0.0.1 and a private HF cache.

huggingface_hub reads HF_ENDPOINT and friends when it is first imported, so the fake Hub starts and the variables are
set here, before any test module imports transformers.
"""

import atexit
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
assert "huggingface_hub" not in sys.modules, "conftest must configure the Hub before huggingface_hub is imported"

from fakehub import FakeHub  # noqa: E402


HUB_TOKEN = "hf_test_token"
_hub = FakeHub(root=tempfile.mkdtemp(prefix="fakehub-"), token=HUB_TOKEN).start()
atexit.register(_hub.stop)
os.environ.update(
    HF_ENDPOINT=_hub.url,
    HF_HOME=tempfile.mkdtemp(prefix="hf-home-"),
    HF_TOKEN=HUB_TOKEN,
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    TOKENIZERS_PARALLELISM="false",
)
os.environ.pop("HF_HUB_OFFLINE", None)
