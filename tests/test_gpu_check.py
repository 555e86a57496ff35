"""gpu_check.py's own machinery, with fake sections (seconds): a section past its cap is killed and
recorded, every section's JSON and log are kept, the report is written after each section and the table
comes last. The real sections run in `python -m workshop.gpu_check --device cpu` (README, DESIGN.md D30)."""
import json
import sys

import pytest

from workshop import gpu_check


def fake_argv(name, device, out, cap_s, workers, data_cache=None):
    """'fast' writes its JSON and exits; 'slow' writes a partial JSON, then sleeps past its cap."""
    write = f"import json, time; open({str(out / (name + '.json'))!r}, 'w').write(json.dumps({{'partial': {name == 'slow'}}}))"
    code = write + ("; print('started', flush=True); time.sleep(60)" if name == "slow" else "")
    return [sys.executable, "-c", code]


def test_a_section_past_its_cap_is_killed_and_the_report_is_still_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "SECTIONS", ("slow", "fast"))
    monkeypatch.setattr(gpu_check, "CAPS", {"slow": (1, 1), "fast": (20, 20)})
    monkeypatch.setattr(gpu_check, "section_argv", fake_argv)
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu"]) == 1  # not every section ok
    res = json.loads((tmp_path / "check.json").read_text())
    slow, fast = res["sections"]["slow"], res["sections"]["fast"]
    assert slow["status"] == "timeout" and slow["cap_s"] == 1 and slow["wall_s"] < 15
    assert slow["result"] == {"partial": True}  # what it wrote before it was killed
    assert "started" in (tmp_path / "slow.log").read_text()
    assert fast["status"] == "ok" and fast["result"] == {"partial": False}  # the next section still ran
    assert res["meta"]["device"] == "cpu" and res["meta"]["wall_s"] > 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("section"))
    assert lines[head].split()[:4] == ["section", "status", "time", "cap"]
    assert [l.split()[:2] for l in lines[head + 2:]] == [["slow", "timeout"], ["fast", "ok"]]  # the table is last


def test_the_budget_bounds_the_caps(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "SECTIONS", ("fast", "slow"))
    monkeypatch.setattr(gpu_check, "CAPS", {"fast": (2, 2), "slow": (20, 20)})
    monkeypatch.setattr(gpu_check, "section_argv", fake_argv)
    gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--budget", "4", "--only", "fast,slow"])
    s = json.loads((tmp_path / "check.json").read_text())["sections"]
    assert s["fast"]["status"] == "ok" and s["fast"]["cap_s"] == 2
    assert s["slow"]["status"] == "skipped" and s["slow"]["cap_s"] < 4  # under 5 s of the budget left: not started


def test_unknown_sections_and_caps_are_refused(tmp_path, capsys):
    for argv in (["--only", "nope"], ["--cap", "nope=3"], ["--cap", "bench=x"]):
        with pytest.raises(SystemExit) as e:
            gpu_check.main(["--out", str(tmp_path), "--device", "cpu"] + argv)
        assert e.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_extrapolation_scales_the_training_part_by_steps():
    one = dict(config=dict(steps=100), seconds_per_candidate=12.0, train_seconds_per_candidate=10.0,
               candidates_per_hour=300.0)  # 12 s a candidate alone
    many = dict(candidates_per_hour=1200.0)  # 4x the rate with workers
    e = gpu_check._extrapolate(one, many, "cuda")
    full = e["full_preset"]
    t_full = 2.0 + 10.0 * full["steps"] / 100
    assert e["seconds_per_candidate_full"] == pytest.approx(t_full)
    n = full["population"] + full["offspring"] * full["generations"]
    base = 2 * gpu_check.FULL_BASELINE_SEEDS * t_full
    assert e["workers_1_hours"] == pytest.approx((base + n * 12.0 * t_full / 12.0) / 3600)
    assert e["workers_n_hours"] == pytest.approx((base + n * 3.0 * t_full / 12.0) / 3600)


def test_the_oracles_section_reads_the_tests_folders_node_ids(tmp_path):
    """pytest -v names the device tests by their path from the repository (tests/test_device.py::...)."""
    log = ("tests/test_device.py::test_a PASSED\ntests/test_device.py::test_b FAILED\n"
           "======= 1 failed, 1 passed in 3.21s =======\n")
    r = gpu_check.collect("oracles", tmp_path, log)
    assert (r["passed"], r["failed"], r["failed_tests"], r["complete"]) == (1, 1, ["test_b"], True)


def test_the_preset_section_can_run_the_users_command_on_prepared_data(tmp_path, capsys):
    """Issue 29 item 3: with --data-cache the preset section's star.py has no --data (the default corpus, from
    STAR_CACHE); without, it trains on random text; a folder with no prepared corpus is refused."""
    argv = gpu_check._star_argv("cuda", 4, tmp_path, "w4", None)
    assert "--data" not in argv and argv[argv.index("--workers") + 1] == "4"
    with_data = gpu_check._star_argv("cuda", 1, tmp_path, "w1", tmp_path / "c.txt")
    assert with_data[with_data.index("--data") + 1] == str(tmp_path / "c.txt")
    child = gpu_check.section_argv("preset", "cuda", tmp_path, 100.0, 4, "/data/star")
    assert child[-2:] == ["--data-cache", "/data/star"]
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--out", str(tmp_path / "o"), "--device", "cpu", "--data-cache", str(tmp_path)])
    assert e.value.code == 2 and "--prepare-data" in capsys.readouterr().err


def test_the_warm_up_runs_before_the_caps_and_says_when_it_fails():
    """Issue 29 item 6: torch's cold import and the device's first kernels are paid once, outside the caps."""
    env = gpu_check.child_env("cpu")
    assert gpu_check.warm_up("cpu", env) > 0
    assert gpu_check.warm_up("no-such-device", env) == -1.0
