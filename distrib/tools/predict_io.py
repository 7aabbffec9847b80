"""What `distrain predict` reads and writes, shared by the torch and the onnxruntime predictors (torch-free).

Inputs: image files, folders (searched recursively, in sorted order) and `@list.txt` files (one path a line).
Rows: {"path": str, "predictions": [{"class": name, "prob": p}, ...], "error": None or "why"}, in input order.
Output: CSV on stdout, or a file whose suffix picks the format (.csv, .json, .jsonl).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time

from distrib.config import ConfigError
from distrib.data.layout import is_image_file
from distrib.files import write_atomic

# ---------------------------------------------------------------- inputs

def list_inputs(args: list[str]) -> list[str]:
    """Every image path the arguments name, in order. A path typed on the command line must exist (bad
    input, exit 2); an entry of a list file that does not is kept, and becomes an error row."""
    paths: list[str] = []
    for arg in args:
        if arg.startswith("@"):
            paths += _read_list(arg[1:])
        elif os.path.isdir(arg):
            paths += _walk(arg)
        elif os.path.exists(arg):
            paths.append(arg)
        else:
            raise ConfigError(f"{arg}: no such file or folder; give image files, folders or @LIST.txt")
    if not paths:
        raise ConfigError(f"no images in {' '.join(args)} (looked for {', '.join(_exts())}); give image files, "
                          "folders holding images or @LIST.txt")
    return paths


def _read_list(list_path: str) -> list[str]:
    try:
        with open(list_path) as fh:
            return [line.strip() for line in fh if line.strip() and not line.startswith("#")]
    except OSError as e:
        raise ConfigError(f"@{list_path}: cannot read the list ({e.strerror}); give a text file of image paths, "
                          "one a line") from None


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()  # os.walk visits sub-folders in this order: sorted, like ImageFolder
        found += [os.path.join(root, f) for f in sorted(files) if is_image_file(f)]
    return found


def _exts() -> list[str]:
    from distrib.data.layout import IMG_EXTENSIONS

    return list(IMG_EXTENSIONS)


# ---------------------------------------------------------------- rows

def row(path: str, probs: list[float] | None = None, indices: list[int] | None = None,
        classes: list[str] | None = None, error: str | None = None) -> dict:
    preds = [{"class": classes[i], "prob": float(p)} for i, p in zip(indices or [], probs or [])]
    return {"path": path, "predictions": preds, "error": error}


# ---------------------------------------------------------------- outputs

FORMATS = (".csv", ".json", ".jsonl")


def output_format(output: str | None) -> str:
    """The format an --output path asks for (its suffix); CSV for stdout. Checked before anything runs."""
    if output is None:
        return ".csv"
    suffix = os.path.splitext(output)[1].lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--output {output}: unknown suffix {suffix or '(none)'}; use .csv, .json or .jsonl")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(f"--output {output}: folder {folder} does not exist; create it or write elsewhere")
    return suffix


def render(rows: list[dict], topk: int, fmt: str) -> str:
    if fmt == ".json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", *[f"{what}{i}" for i in range(1, topk + 1) for what in ("class", "prob")], "error"])
    for r in rows:
        cells = [c for p in r["predictions"] for c in (p["class"], f"{p['prob']:.6f}")]
        writer.writerow([r["path"], *cells, *[""] * (2 * topk - len(cells)), r["error"] or ""])
    return buf.getvalue()


def write(rows: list[dict], topk: int, output: str | None) -> None:
    """The rows to --output (atomically: a reader never sees half a file) or as CSV to stdout. A model
    with fewer classes than --topk gets as many columns as it has classes."""
    topk = max((len(r["predictions"]) for r in rows if r.get("predictions")), default=topk)
    text = render(rows, topk, output_format(output))
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_atomic(output, text)


def summary(rows: list[dict], output: str | None) -> str:
    bad = [r for r in rows if r["error"]]
    where = f" to {output}" if output else ""
    text = f"predicted {len(rows) - len(bad)} of {len(rows)} images{where}"
    if bad:
        text += f"; {len(bad)} unreadable (rows with an error, e.g. {bad[0]['path']}: {bad[0]['error']})"
    return text


# ---------------------------------------------------------------- progress

class ProgressBar:
    """`predict: 120/360 images` redrawn in place on a terminal (stderr, else stdout); silent otherwise."""

    def __init__(self, total: int, label: str = "predict"):
        self.total, self.label, self.done, self.last = total, label, 0, 0.0
        self.stream = next((s for s in (sys.stderr, sys.stdout) if s.isatty()), None)

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and (now - self.last > 0.2 or self.done >= self.total):
            self.last = now
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\r" + " " * (len(self.label) + 60) + "\r")
            self.stream.flush()
