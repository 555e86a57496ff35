"""The golden run (DESIGN.md D22): a tiny synthesis whose archive (genomes, keys, objectives) is pinned
by its hash under the pinned torch, so that any change to results is seen, and made on purpose; and a
run folder of the previous config.json format, resumed by today's code to the same archive."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import config
import star

# the cpu preset shrunk to seconds; 2 baseline seeds, 4 + 3 x 2 candidates
TINY = ["--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "32",
        "--batch", "4", "--steps", "3", "--population", "4", "--offspring", "3", "--baseline-seeds", "2"]
# sha256 of the 10 archive lines [generation, genome, key, objectives] of TINY with --generations 2,
# under torch 2.13.0 on CPU. Changed on purpose by D33: TINY now inherits the cpu preset's held-out set of
# 8,192 tokens (256 windows of 32) instead of 8 batches x 4 x 32 = 1,024 tokens.
GOLDEN = "32d6bf9f3c501914650246c3099edec1406e904bd81cac4d9c80653e57d04cae"
# the same run before D33 (1,024 held-out tokens): recorded before the restructuring of D22 and unchanged by it;
# what the committed format-1 folder resumes to, since format 1 meant eval_batches x batch x seq_len tokens
GOLDEN_BEFORE_D33 = "ae1f166cccb0273d619938cd15138c8b4cd291272df1f72be4f866b39c1879f0"
PINNED = torch.__version__.split("+")[0] == "2.13.0"
FORMAT1 = Path(__file__).parent / "testdata" / "format1-run"  # TINY --generations 1, written before D22
FORMAT2 = Path(__file__).parent / "testdata" / "format2-run"  # the same, written by D22's code (before D23)


def archive_hash(run_dir: Path) -> tuple[str, int]:
    rows = [json.loads(line) for line in (run_dir / "archive.jsonl").read_text().splitlines() if line.strip()]
    text = "".join(json.dumps([r["generation"], r["genome"], r["key"], r["objectives"]]) + "\n" for r in rows)
    return hashlib.sha256(text.encode()).hexdigest(), len(rows)


@pytest.mark.skipif(not PINNED, reason="the golden hash is of the pinned torch 2.13.0")
def test_the_golden_run_is_unchanged(tmp_path):
    assert star.main(TINY + ["--generations", "2", "--out", str(tmp_path), "--name", "g"]) == 0
    assert archive_hash(tmp_path / "g") == (GOLDEN, 10)


def test_a_run_of_the_previous_format_resumes_and_extends(tmp_path, capsys):
    """config.json of format 1 (no "format" key) is read with what that format meant (its eval_batches =
    8 x 4 x 32 = 1,024 held-out tokens, though today's preset default is 8,192: options not given are the
    run's); `generations` is an extent key, so the finished 1-generation run goes on to 2, keeping its first
    generations as they were, and its config.json is rewritten in today's format."""
    run = tmp_path / "old"
    shutil.copytree(FORMAT1, run)
    before = (run / "archive.jsonl").read_text()
    assert "format" not in json.loads((run / "config.json").read_text())
    assert star.main(TINY + ["--generations", "2", "--out", str(tmp_path), "--name", "old", "--resume"]) == 0
    assert (run / "archive.jsonl").read_text().startswith(before)
    assert json.loads((run / "config.json").read_text())["format"] == config.FORMAT
    assert json.loads((run / "config.json").read_text())["generations"] == 2
    assert json.loads((run / "config.json").read_text())["eval_tokens"] == 1024
    if PINNED:  # the same archive as the uninterrupted 2-generation run of the code that wrote it
        assert archive_hash(run) == (GOLDEN_BEFORE_D33, 10)


def test_a_format_2_run_resumes_its_data_unchecked_once_then_recorded(tmp_path, capsys):
    """config.json of format 2 (written before D23) has no data fingerprint: the resume says once that
    it cannot check the data, records the data's fingerprint, and the next resume checks it."""
    run = tmp_path / "old"
    shutil.copytree(FORMAT2, run)
    before = (run / "archive.jsonl").read_text()
    stored = json.loads((run / "config.json").read_text())
    assert stored["format"] == 2 and "data_fingerprint" not in stored
    assert star.main(TINY + ["--generations", "2", "--out", str(tmp_path), "--name", "old", "--resume"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "data_fingerprint" in line]
    assert len(notes) == 1 and "not checked on this resume" in notes[0], notes
    now = json.loads((run / "config.json").read_text())
    assert now["format"] == config.FORMAT and now["data_fingerprint"].startswith("synthetic associative recall")
    assert (run / "archive.jsonl").read_text().startswith(before)
    assert now["eval_tokens"] == 1024  # format 2 before D33 counted 8 eval batches of 4 x 32
    if PINNED:  # as the uninterrupted run of the code that wrote it
        assert archive_hash(run) == (GOLDEN_BEFORE_D33, 10)
    assert star.main(TINY + ["--generations", "2", "--out", str(tmp_path), "--name", "old", "--resume"]) == 0
    assert "data_fingerprint" not in capsys.readouterr().out  # recorded now: checked, nothing to say


def test_an_identity_key_cannot_change_on_resume_and_its_line_names_it(tmp_path, capsys):
    shutil.copytree(FORMAT1, tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    assert star.main(TINY + ["--steps", "4", "--out", str(tmp_path), "--name", "old", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps = 3" in err[0] and "4" in err[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir() if p.name != "lock"} == before


def test_resume_needs_only_the_name_options_not_given_are_the_runs(tmp_path):
    shutil.copytree(FORMAT1, tmp_path / "old")
    assert star.main(["--out", str(tmp_path), "--name", "old", "--resume", "--generations", "2"]) == 0
    c = json.loads((tmp_path / "old" / "config.json").read_text())
    assert (c["data"], c["d_model"], c["steps"], c["baseline_seeds"], c["eval_tokens"], c["generations"]) == \
        ("synthetic", 32, 3, 2, 1024, 2)
    if PINNED:
        assert archive_hash(tmp_path / "old") == (GOLDEN_BEFORE_D33, 10)
