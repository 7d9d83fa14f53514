"""The example under 2 CPU ranks (DDP over gloo) finishes, twice in a row: stage 0 and every write to a shared folder
happen on the main process while the other waits, and the reload and demo run on the main process only."""

import os

from launch import run_script

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "run_instruct_tuning.py")


def test_two_rank_example_run_exits_0_twice_in_a_row(tmp_path, capfd):
    arguments = [
        "--output_dir", str(tmp_path / "out"), "--miniature_cache_dir", str(tmp_path / "cache"),
        "--miniature_pretraining_steps", "2", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--miniature_eval_examples", "2", "--use_cpu", "--disable_tqdm", "true",
    ]
    # The first run pre-trains stage 0 into the empty cache (rank 1 waits, then reads it); the second reads it and
    # overwrites the output folder that rank 1 must not reload while rank 0 writes it.
    for _ in range(2):
        run_script(os.path.abspath(EXAMPLE), *arguments, processes=2, timeout=300)
    printed = capfd.readouterr().out
    assert printed.count("pipeline('image-text-to-text')") == 2  # the demo: main process only, once per run
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")
