"""Watching a long run (issue 22, items 4-6): pictures in TensorBoard, runs side by side in HPARAMS and in
`distrain status RUNS_DIR`, `eval --report`, and `--profile`. Real runs, real TensorBoard over HTTP."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY, assert_ok, distrain
from test_tensorboard import get_json, post_json, served


@pytest.fixture(scope="module")
def runs(imagefolder, tmp_path_factory) -> Path:
    """A folder of two runs: 2 gloo processes with mixup and --profile on every rank, and 1 process with another
    lr."""
    folder = tmp_path_factory.mktemp("runs-side-by-side")
    proc = distrain("launch", "--gpus", "0", "--procs", "2", "--data", imagefolder, "--epochs", "2",
                    "--run-dir", folder / "mixup", *TINY, "--mixup-alpha", "0.2", "--profile", "1:2",
                    "--profile-ranks", "all")
    assert_ok(proc)
    assert "data wait:" in proc.stdout and "aten::" in proc.stdout  # the printed profile table
    runs.profile_stdout = proc.stdout
    proc = distrain("train", "--device", "cpu", "--data", imagefolder, "--epochs", "1", "--run-dir",
                    folder / "plain", *[a if a != "0.2" else "0.1" for a in TINY])
    assert_ok(proc)
    return folder


def test_tensorboard_shows_the_pictures_and_every_run_in_hparams(runs):
    # --host: another loopback address than the default 127.0.0.1, so the option is what makes this answer
    with served(runs, "--host", "127.0.0.2", host="127.0.0.2") as server:
        base = server.base
        images, deadline = {}, time.monotonic() + 90
        while time.monotonic() < deadline and {"mixup/tb", "plain/tb"} - set(images):
            try:
                images = get_json(f"{base}/data/plugin/images/tags")
            except OSError:
                time.sleep(0.5)
        for run in ("mixup/tb", "plain/tb"):
            assert {"pictures/first_batch", "pictures/confusion_matrix", "pictures/confidently_wrong"} <= set(images[run])
        grid = get_json(f"{base}/data/plugin/images/images?run=mixup/tb&tag=pictures/first_batch")
        assert len(grid) == 1 and grid[0]["step"] == 0
        matrix = get_json(f"{base}/data/plugin/images/images?run=mixup/tb&tag=pictures/confusion_matrix")
        rows = [json.loads(line) for line in (runs / "mixup" / "metrics.jsonl").read_text().splitlines()]
        best = max(rows, key=lambda r: (r["val_acc1"], -r["epoch"]))  # the first epoch with the best acc1
        assert matrix[-1]["step"] == best["epoch"]  # written at each new best: the newest is the best epoch

        experiment = post_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        columns = {h["name"] for h in experiment["hparamInfos"]}
        assert {"arch", "lr", "batch_size", "mixup_alpha", "world_size"} <= columns
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"best/acc1", "best/acc5", "val/acc1", "val/acc5", "run/wall_seconds"} <= metrics
        groups = post_json(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                      "STATUS_RUNNING"], "colParams": [], "startIndex": 0,
            "sliceSize": 100})["sessionGroups"]
        sessions = {g["name"]: g for g in groups}
        assert set(sessions) == {"mixup", "plain"} and all(len(g["sessions"]) == 1 for g in groups)
        assert sessions["mixup"]["hparams"]["lr"] == 0.2 and sessions["plain"]["hparams"]["lr"] == 0.1
        assert sessions["mixup"]["hparams"]["world_size"] == 2 and sessions["mixup"]["hparams"]["mixup_alpha"] == 0.2
        for name, g in sessions.items():
            values = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
            rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
            assert values["val/acc1"] == pytest.approx(rows[-1]["val_acc1"], abs=1e-4)
            assert values["best/acc1"] == pytest.approx(max(r["val_acc1"] for r in rows), abs=1e-4)
            assert values["run/wall_seconds"] > 0
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.2:{server.port}"], listening
    assert f"http://127.0.0.2:{server.port}/" in server.out
    assert "anyone who can reach" not in server.out  # loopback: no warning
    # one experiment record, at the root of the runs folder; none inside the runs (no add_hparams folders)
    assert len(list(runs.glob("events.out.tfevents.*distrain-experiment*"))) == 1
    assert not [p for p in runs.rglob("*") if p.is_dir() and p.parent.name == "tb"]


def test_the_profile_is_a_chrome_trace_of_training_steps(runs):
    for rank in (0, 1):  # --profile-ranks all: each rank traces its own steps, into its own file
        trace = json.loads((runs / "mixup" / "profile" / f"rank{rank}-trace.json").read_text())
        assert trace["distributedInfo"]["rank"] == rank and trace["distributedInfo"]["world_size"] == 2
        names = {e.get("name", "") for e in trace["traceEvents"]}
        assert sum(n.startswith("ProfilerStep#") for n in names) == 2, rank  # --profile 1:2: two steps
        assert "aten::convolution_backward" in names and any("DistributedDataParallel" in n for n in names)
        assert "data wait:" in (runs / "mixup" / "profile" / f"rank{rank}-top.txt").read_text()
    assert not (runs / "plain" / "profile").exists()  # off by default: nothing written


def test_the_profile_is_on_rank_0_only_by_default():
    import torch

    from distrib.config import RunConfig
    from distrib.report.profile import Profiler

    cfg = RunConfig(synthetic=True, profile="1:2")
    assert cfg.profile_ranks == "0"
    assert Profiler.from_config(cfg, 1, torch.device("cpu")) is None


def test_status_of_a_runs_folder_is_a_row_per_run(runs):
    proc = distrain("status", runs)
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["run", "state", "epoch", "best", "acc1", "img/s", "last", "update"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"mixup", "plain"}
    assert rows["mixup"][1:5] == ["finished", "2", "of", "2"] and rows["plain"][1:5] == ["finished", "1", "of", "1"]
    best = max(json.loads(x)["val_acc1"] for x in (runs / "plain" / "metrics.jsonl").read_text().splitlines())
    assert rows["plain"][5] == f"{best:.2f}%" and rows["plain"][-1] == "ago"


def test_eval_report_is_exact_for_any_process_count(runs, imagefolder, tmp_path):
    best = runs / "mixup" / "checkpoints" / "best.pt"
    reports = {}
    for procs in (1, 2):
        out = tmp_path / f"report-{procs}"
        proc = distrain("eval", "--checkpoint", best, "--data", imagefolder, "--gpus", "0", "--procs", procs,
                        "--report", out, "--json")
        assert_ok(proc)
        reports[procs] = {name: (out / name).read_text() for name in
                          ("per_class.csv", "confused_pairs.csv", "confusion_counts.csv")}
        assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
        acc1 = json.loads(proc.stdout.strip().splitlines()[-1])["acc1"]
        per_class = list(csv.DictReader(reports[procs]["per_class.csv"].splitlines()))
        assert sum(int(r["images"]) for r in per_class) == 29  # every val image once, whatever the world size
        assert 100 * sum(int(r["correct"]) for r in per_class) / 29 == pytest.approx(acc1)
    assert reports[1] == reports[2]


def test_confusion_image_and_text_for_any_class_count():
    import torch

    from distrib.report.confusion import ConfusionResult
    from distrib.report.draw import confusion_image
    from distrib.report.pictures import markdown

    counts = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 4]])
    picture = confusion_image(counts, size=300)
    assert picture.dtype == torch.uint8 and picture.shape == (3, 300, 300)
    assert picture[:, 150, 250].tolist() == [255, 255, 255] and picture[2, 250, 250] < 200  # empty vs full cell
    result = ConfusionResult(counts, [])
    assert result.confused_pairs(["a", "b", "c"]) == [("b", "a", 2), ("a", "b", 1)]
    assert "| c | 4 | 4 | 100.00 |" in markdown(result, ["a", "b", "c"], "t")


def test_a_bad_profile_window_is_one_line(tmp_path, imagefolder):
    proc = distrain("launch", "--gpus", "0", "--data", imagefolder, "--run-dir", tmp_path / "r", "--profile", "5",
                    "--dry-run")
    assert proc.returncode == 2 and "--profile '5' is not START:STEPS" in proc.stderr


def test_more_classes_than_a_picture_holds_get_the_text_report(tmp_path):
    """60 classes, past the 50 a confusion image can show: one epoch of training writes the per-class text to
    TensorBoard and no matrix image; `distrain eval --report` writes every class's row, the 10 most confused
    pairs and no confusion_matrix.png."""
    from imagefolder import make_imagefolder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_imagefolder(tmp_path / "sixty", classes=60, train_per_class=2, val_per_class=2, size=16)
    run_dir = tmp_path / "runs" / "sixty"
    proc = distrain("train", "--device", "cpu", "--data", data, "--epochs", "1", "--run-dir", run_dir, "--arch",
                    "resnet18", "--image-size", "16", "--batch-size", "30", "--workers", "0", "--seed", "0")
    assert_ok(proc)
    classes = sorted(f"class{i}" for i in range(60))  # ImageFolder's order
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "pictures/confidently_wrong" in events.Tags()["images"]
    assert "pictures/confusion_matrix" not in events.Tags()["images"]
    text = events.Tensors("pictures/per_class/text_summary")[-1].tensor_proto.string_val[0].decode()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    assert [r[0] for r in cells if len(r) == 6][2:] == classes  # the per-class table, under its header and rule
    assert len([r for r in cells if len(r) == 3][2:]) == 10  # the most confused pairs

    out = tmp_path / "report"
    proc = distrain("eval", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--data", data, "--gpus", "0",
                    "--procs", "1", "--report", out, "--json")
    assert_ok(proc)
    assert not (out / "confusion_matrix.png").exists()
    assert (out / "confidently_wrong.png").read_bytes()[:4] == b"\x89PNG"
    per_class = list(csv.DictReader((out / "per_class.csv").read_text().splitlines()))
    assert [r["class"] for r in per_class] == classes
    acc1 = json.loads(proc.stdout.strip().splitlines()[-1])["acc1"]
    assert sum(int(r["images"]) for r in per_class) == 121  # 2 a class, and class0's extra one
    assert 100 * sum(int(r["correct"]) for r in per_class) / 121 == pytest.approx(acc1)
    counts = {(row[0], name): int(n) for row in csv.reader((out / "confusion_counts.csv").read_text().splitlines()[1:])
              for name, n in zip(classes, row[1:])}
    wrong = sorted(((-n, classes.index(t), classes.index(p)), (t, p, str(n))) for (t, p), n in counts.items()
                   if t != p and n)
    pairs = [tuple(r) for r in csv.reader((out / "confused_pairs.csv").read_text().splitlines()[1:])]
    assert len(wrong) >= 10 and pairs == [pair for _, pair in wrong[:10]]  # the 10 largest off the diagonal
