"""distrain predict: a checkpoint's top-k per image, agreeing with eval, on 1 or 2 processes, in input order."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import CLASSES, assert_ok, distrain
from imagefolder import corrupt_file


@pytest.fixture(scope="module")
def one_process_rows(trained_checkpoint, imagefolder, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("predict") / "rows.json"
    proc = distrain("predict", "--checkpoint", trained_checkpoint, imagefolder / "val", "--topk", "5",
                    "--gpus", "0", "--batch-size", "64", "--output", out)
    assert_ok(proc)
    assert "predicted 29 of 29 images" in proc.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def eval_result(trained_checkpoint, imagefolder) -> dict:
    proc = distrain("eval", "--checkpoint", trained_checkpoint, "--data", imagefolder, "--gpus", "0", "--json")
    assert_ok(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference_logits(trained_checkpoint, imagefolder):
    """The checkpoint's model on every val image through eval's preprocessing, in this test: (paths, logits)."""
    import torch
    import torchvision

    from distrib import checkpoint
    from distrib.data.images import load_val

    ckpt = checkpoint.load(str(trained_checkpoint))
    model = torchvision.models.get_model(ckpt["arch"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    pre = ckpt["preprocessing"]
    paths = sorted(str(p) for p in (imagefolder / "val").rglob("*.jpg"))
    images = torch.stack([load_val(p, pre["crop_size"], pre["resize_size"]) for p in paths]).float()
    mean, std = (torch.tensor(pre[k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    with torch.no_grad():
        return paths, ckpt["classes"], model.eval()((images - mean) / std)


def test_top1_and_top5_agree_with_eval_exactly(one_process_rows, eval_result):
    paths = [r["path"] for r in one_process_rows]
    assert paths == sorted(paths) and len(paths) == 29  # the folder, recursively, in sorted order
    truth = [r["path"].split("/")[-2] for r in one_process_rows]
    top5 = [[p["class"] for p in r["predictions"]] for r in one_process_rows]
    assert 100 * sum(t == k[0] for t, k in zip(truth, top5)) / 29 == eval_result["acc1"]
    assert 100 * sum(t in k for t, k in zip(truth, top5)) / 29 == eval_result["acc5"]
    assert eval_result["acc1"] < eval_result["acc5"], eval_result  # 8 classes: acc5 is its own number
    for r in one_process_rows:
        probs = [p["prob"] for p in r["predictions"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert r["error"] is None


def test_each_images_prediction_is_its_own(one_process_rows, reference_logits):
    """Per image, not only in total: predict's top-5 classes and probabilities for each path are the model's
    output on that image (eval's preprocessing), so a row can't carry another image's prediction."""
    paths, classes, logits = reference_logits
    assert [r["path"] for r in one_process_rows] == paths
    probs = logits.softmax(dim=1)
    for r, l, p in zip(one_process_rows, logits, probs):
        want = l.topk(5)  # ranked by logit, as eval's top-5: probabilities that underflow to 0.0 would tie
        assert [x["class"] for x in r["predictions"]][:1] == [classes[want.indices[0]]], r["path"]
        assert [x["class"] for x in r["predictions"]] == [classes[i] for i in want.indices.tolist()], r["path"]
        assert [x["prob"] for x in r["predictions"]] == pytest.approx(p[want.indices].tolist(), abs=1e-5), r["path"]


def test_two_processes_write_the_same_rows_in_the_same_order(one_process_rows, trained_checkpoint, imagefolder,
                                                             tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = distrain("predict", "--checkpoint", trained_checkpoint, imagefolder / "val", "--topk", "5",
                    "--gpus", "0", "--procs", "2", "--batch-size", "64", "--output", out)
    assert_ok(proc)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [r["path"] for r in one_process_rows]  # 29 = 14 + 15: no duplicates
    for two, one in zip(rows, one_process_rows):
        assert [p["class"] for p in two["predictions"]] == [p["class"] for p in one["predictions"]]
        assert [p["prob"] for p in two["predictions"]] == pytest.approx([p["prob"] for p in one["predictions"]],
                                                                          abs=1e-5)


def test_unreadable_images_are_error_rows_and_the_run_succeeds(trained_checkpoint, imagefolder, tmp_path):
    good = imagefolder / "val" / "class1" / "0000.jpg"
    broken = corrupt_file(tmp_path / "broken.jpg", "garbage")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{broken}\n{tmp_path / 'gone.jpg'}\n\n{good}\n")
    proc = distrain("predict", "--checkpoint", trained_checkpoint, good, f"@{listing}", "--topk", "2", "--gpus", "0")
    assert_ok(proc)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))  # CSV on stdout; the summary went to stderr
    assert [r["path"] for r in rows] == [str(good), str(broken), str(tmp_path / "gone.jpg"), str(good)]
    assert list(rows[0]) == ["path", "class1", "prob1", "class2", "prob2", "error"]
    assert rows[0]["class1"] == rows[3]["class1"] and not rows[0]["error"]
    assert rows[1]["error"] and not rows[1]["class1"]
    assert "cannot read file" in rows[2]["error"]
    assert "2 unreadable" in proc.stderr


def test_a_topk_above_the_class_count_gets_a_column_per_class(trained_checkpoint, imagefolder):
    image = next((imagefolder / "val").rglob("*.jpg"))
    proc = distrain("predict", "--checkpoint", trained_checkpoint, image, "--topk", "12", "--gpus", "0")
    assert_ok(proc)
    header = next(csv.reader(io.StringIO(proc.stdout)))
    assert header == ["path", *[f"{c}{k}" for k in range(1, CLASSES + 1) for c in ("class", "prob")], "error"]


@pytest.mark.parametrize("args, message", [
    (["--output", "preds.txt"], "unknown suffix .txt"),
    (["--topk", "0"], "--topk 0 must be at least 1"),
    ([], "give --checkpoint PATH"),
])
def test_bad_predict_options_are_one_line_before_anything_runs(tmp_path, imagefolder, args, message):
    proc = distrain("predict", imagefolder / "val", *(["--checkpoint", tmp_path / "none.pt"] if args else []),
                    *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.all
    assert message in proc.stderr and "Traceback" not in proc.all
    assert len(proc.stderr.strip().splitlines()) == 1
