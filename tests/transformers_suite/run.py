"""Run transformers' own InstructBLIP model and generation tests on the built-in model and on hf_instructblip.

    python tests/transformers_suite/run.py --transformers-tests PATH/TO/transformers/tests [--workdir DIR]

transformers' source distribution ships the common tester mixins (`tests/test_modeling_common.py`, ...) but not
`tests/generation/test_utils.py` nor `tests/models/instructblip/`: those come from a checkout of the transformers
repository (`--transformers-tests`, its `tests/` folder). The mixins are taken from the source distribution of the
installed transformers version (`pip download`), the rest from the checkout. The unchanged test module then runs
twice, on the built-in classes and with this package's classes swapped in (`conftest_adapter.py`), and every test
that passes on the built-in must pass here too, apart from `KNOWN_DIFFERENCES` (each also listed in the README).

This needs PyPI and a transformers checkout, so it is not part of the offline test suite; it prints the counts
recorded in the README.
"""

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import transformers


HERE = Path(__file__).parent
TEST_MODULE = "tests/models/instructblip/test_modeling_instructblip.py"
FROM_CHECKOUT = [
    "__init__.py",
    "models/__init__.py",
    "models/instructblip/__init__.py",
    "models/instructblip/test_modeling_instructblip.py",
    "generation/__init__.py",
    "generation/test_utils.py",
    "utils/__init__.py",
]
FROM_SDIST = [
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_pipeline_mixin.py",
    "test_training_mixin.py",
    "test_tensor_parallel_mixin.py",
]
MARKERS = ["generate", "flash_attn_test", "flash_attn_3_test", "torch_compile_test", "torch_export_test", "training_ci"]

# Tests that pass on the built-in and not here, with the reason (the README's list).
KNOWN_DIFFERENCES = {}


def assemble(checkout: Path, workdir: Path) -> Path:
    """The test tree: the checkout's model and generation tests over the installed version's common mixins."""
    tests = workdir / "tests"
    for name in FROM_CHECKOUT:
        (tests / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkout / name, tests / name)
    # Only `config_common_kwargs` of this module is used; the rest imports packages the tests do not need.
    source = (checkout / "utils" / "test_configuration_utils.py").read_text()
    kwargs = next(
        node for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "config_common_kwargs" for t in node.targets)
    )
    (tests / "utils" / "test_configuration_utils.py").write_text(ast.get_source_segment(source, kwargs) + "\n")
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"transformers=={transformers.__version__}", "-d", download],
            check=True,
        )
        with tarfile.open(next(Path(download).glob("transformers-*.tar.gz"))) as sdist:
            root = f"transformers-{transformers.__version__}/tests/"
            for name in FROM_SDIST:
                member = sdist.extractfile(root + name)
                (tests / name).write_bytes(member.read())
    (tests / "exporters").mkdir(exist_ok=True)
    (tests / "exporters" / "__init__.py").touch()
    if not (tests / "exporters" / "test_export.py").exists():  # the torch.export tests are in neither source
        (tests / "exporters" / "test_export.py").write_text("class ExportTesterMixin:\n    pass\n")
    (workdir / "pytest.ini").write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in MARKERS))
    shutil.copy(HERE / "conftest_adapter.py", workdir / "conftest_adapter.py")
    return workdir


def run(workdir: Path, under_test: str) -> dict[str, str]:
    """Outcome ("passed", "failed", "skipped") of every test, by name."""
    report = workdir / f"{under_test}.xml"
    source = str(HERE.parent.parent / "src")
    env = {**os.environ, "INSTRUCTBLIP_UNDER_TEST": under_test,
           "PYTHONPATH": os.pathsep.join([str(workdir), source, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest_adapter",
                    TEST_MODULE, f"--junitxml={report}"], cwd=workdir, env=env)
    return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    results = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        results[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return results


def count(results: dict[str, str]) -> str:
    return ", ".join(f"{sum(v == k for v in results.values())} {k}" for k in ("passed", "failed", "skipped"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transformers-tests", type=Path, required=True, help="the tests/ folder of a checkout")
    parser.add_argument("--workdir", type=Path, default=None, help="where to assemble (default: a temporary folder)")
    args = parser.parse_args()
    workdir = assemble(args.transformers_tests, args.workdir or Path(tempfile.mkdtemp(prefix="instructblip-suite-")))
    builtin, ours = run(workdir, "builtin"), run(workdir, "ours")
    print(f"transformers {transformers.__version__}, {TEST_MODULE}")
    print(f"built-in:        {count(builtin)}")
    print(f"hf_instructblip: {count(ours)}")
    regressions = sorted(n for n, o in builtin.items() if o == "passed" and ours.get(n) != "passed")
    for name in regressions:
        reason = KNOWN_DIFFERENCES.get(name, "NOT EXPLAINED")
        print(f"  passes on the built-in only: {name} ({ours.get(name, 'absent')}): {reason}")
    gains = sorted(n for n, o in ours.items() if o == "passed" and builtin.get(n) != "passed")
    for name in gains:
        print(f"  passes here only: {name} (built-in: {builtin.get(name, 'absent')})")
    sys.exit(int(any(name not in KNOWN_DIFFERENCES for name in regressions)))


if __name__ == "__main__":
    main()
