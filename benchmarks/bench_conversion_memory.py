"""Peak memory and time of converting a full-size, vicuna7b-shaped LAVIS checkpoint.

The inputs (real ViT-g and Q-Former shapes, a Vicuna-7B-shaped LLM with fewer layers; see make_lavis_inputs.py)
are written by one child process and converted by another, through the CLI; the conversion's peak RSS is the
kernel's count for that child. This launcher imports only the standard library: on Linux a child's peak RSS
includes the parent's size at fork time, so a heavy launcher would inflate the figures.

    python benchmarks/bench_conversion_memory.py [--llm-layers 4] [--llm-format safetensors|bin] [--max-shard-gb 2]
        [--dtype float16]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of `command` run as a child process."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=environment)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} failed with status {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux


def size_gib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(file.stat().st_size for file in files) / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-layers", type=int, default=4, help="LLM layers (Vicuna-7B has 32)")
    parser.add_argument("--llm-format", choices=["safetensors", "bin"], default="safetensors")
    parser.add_argument("--max-shard-gb", type=int, default=2, help="--max-shard-size of the conversion, in GB")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--workdir", type=Path, help="where to write inputs and output (default: a temporary dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_conversion_"))

    make_seconds, _ = run_measured(
        [sys.executable, "benchmarks/make_lavis_inputs.py", str(workdir), "--llm-layers", str(args.llm_layers)]
        + ["--llm-format", args.llm_format]
    )
    inputs = json.loads((workdir / "inputs.json").read_text())
    output = workdir / "converted"
    convert = [sys.executable, "-m", "hf_instructblip.conversion", *[item for pair in inputs.items() for item in pair]]
    convert += ["--variant", "vicuna7b", "--dtype", args.dtype, "--max-shard-size", f"{args.max_shard_gb}GB"]
    convert += ["--output", str(output)]
    _, import_rss = run_measured([sys.executable, "-c", "import hf_instructblip.conversion"])
    seconds, peak_rss = run_measured(convert)

    # The library alternative to the converter's streaming writer: safetensors' save_file needs a whole shard in
    # memory. Measured alone on the largest output shard (a conversion would hold vision + Q-Former besides).
    shard = max(output.glob("*.safetensors"), key=lambda path: path.stat().st_size)
    library = (
        "import sys; from safetensors.torch import load_file, save_file; save_file(load_file(sys.argv[1]), sys.argv[2])"
    )
    _, library_rss = run_measured([sys.executable, "-c", library, str(shard), str(workdir / "copy")])

    vision_gib = size_gib(Path(inputs["--vit-checkpoint"]))
    trimmed_gib = size_gib(Path(inputs["--lavis-checkpoint"]))
    bound = 1.5 * args.max_shard_gb * 1e9 / GIB + vision_gib + trimmed_gib
    rows = [
        ("input: EVA ViT-g file (40 blocks + norm, fp16)", f"{vision_gib:.2f} GiB"),
        ("input: trimmed checkpoint (Q-Former etc., fp32)", f"{trimmed_gib:.2f} GiB"),
        (
            f"input: LLM, {args.llm_layers} of 32 layers, vocab 32000 (fp16 {args.llm_format})",
            f"{size_gib(Path(inputs['--llm'])):.2f} GiB",
        ),
        (f"output ({args.dtype}, --max-shard-size {args.max_shard_gb}GB)", f"{size_gib(output):.2f} GiB"),
        ("conversion wall time", f"{seconds:.0f} s"),
        ("conversion peak RSS", f"{peak_rss:.2f} GiB"),
        ("peak RSS of `import hf_instructblip.conversion`", f"{import_rss:.2f} GiB"),
        (f"safetensors.save_file of the largest shard ({size_gib(shard):.2f} GiB): peak RSS", f"{library_rss:.2f} GiB"),
        ("bound: 1.5 x max-shard-size + vision + Q-Former", f"{bound:.2f} GiB"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"(inputs written in {make_seconds:.0f} s to {workdir})")
    print(f"| {'quantity':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    print("\n".join(f"| {name:<{width}} | {value} |" for name, value in rows))


if __name__ == "__main__":
    main()
