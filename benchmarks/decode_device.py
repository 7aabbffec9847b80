"""`--decode device` against the worker path, on the same JPEGs, through `distrain bench --loader-only`.

    python benchmarks/decode_device.py                       # 512 JPEGs of 500x375, CPU, 3 rounds
    python benchmarks/decode_device.py --device cuda --count 2048 --workers 8 --rounds 5

--decode device moves JPEG decoding from the loader's worker processes to the training device
(torchvision's decode_jpeg in batches: nvJPEG on a GPU). Each round runs the real command twice, once per
path, alternating (so a neighbour's load hits both alike); the figure is the median ratio of the rates.
On CPU the "device" is the training process itself, so no gain is expected there: the figure that matters
is taken with --device cuda.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from loader_bench import make_jpegs


def rate(data: Path, decode: str, args) -> float:
    argv = [sys.executable, "-m", "launch", "bench", "--loader-only", "--data", str(data), "--decode", decode,
            "--workers", str(args.workers), "--batch-size", "32", "--image-size", "224", "--device", args.device,
            "--seconds", str(args.seconds), "--json"]
    proc = subprocess.run(argv, check=False, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"distrain bench failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["images_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_jpegs(Path(tmp) / "jpegs", (500, 375), args.count)
        rounds = [{"workers": rate(data, "workers", args), "device": rate(data, "device", args)}
                  for _ in range(args.rounds)]
    ratio = statistics.median(r["device"] / r["workers"] for r in rounds)
    if args.json:
        print(json.dumps({"device": args.device, "rounds": rounds, "device_over_workers": round(ratio, 2)}))
        return
    for r in rounds:
        print(f"workers {r['workers']:.0f} img/s   device {r['device']:.0f} img/s")
    print(f"--decode device / --decode workers on {args.device}: {ratio:.2f}x (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
