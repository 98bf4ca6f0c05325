"""Label images with a task from a bank (see configs/adapt.py):

  python -m experiments.predict --bank=BANK --task=NAME --images=PATH_OR_FOLDER[,PATH...] [--csv=OUT.csv]

Prints (or writes as CSV) one line per image: path, class index, class name. Bad input ends with one
sentence and exit code 1.
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import sys

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def image_paths(spec: str) -> list[str]:
    """Files named in a comma-separated list; a folder stands for every image in it (recursively, sorted)."""
    paths = []
    for part in filter(None, spec.split(",")):
        if os.path.isdir(part):
            paths += sorted(os.path.join(root, f) for root, _, files in os.walk(part) for f in files
                            if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(part):
            paths.append(part)
        else:
            raise ValueError(f"--images names {part}, which does not exist.")
    if not paths:
        raise ValueError(f"--images {spec} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return paths


def predict(bank_dir: str, task: str, spec: str, allow_other_weights: bool = False) -> list[tuple[str, int, str]]:
    """(path, class index, class name) for every image `spec` names."""
    from modular import data, predict as predict_lib
    predictor = predict_lib.BankPredictor(bank_dir, allow_other_weights=allow_other_weights)
    size, channels = predictor.image_spec(task)
    paths = image_paths(spec)
    labels = predictor.predict(task, data.read_images(paths, image_size=size, channels=channels))
    names = predictor.entry(task)["classes"]
    return [(p, int(k), names[int(k)]) for p, k in zip(paths, labels)]


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)   # started: Ctrl-C is a KeyboardInterrupt again
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--images", required=True, help="image files and/or folders, comma-separated")
    parser.add_argument("--csv", default="", help="write the predictions here instead of printing them")
    parser.add_argument("--allow_other_weights", action="store_true",
                        help="load a task file trained on other weights of its backbone's architecture")
    args = parser.parse_args(argv)
    if args.csv:   # before any work: predictions are never computed only to be lost
        folder = os.path.dirname(os.path.abspath(args.csv))
        if not os.path.isdir(folder):
            print(f"error: --csv {args.csv}: the folder {folder} does not exist; create it first.", file=sys.stderr)
            return 1
        if not os.access(folder, os.W_OK) or os.path.isdir(args.csv):
            print(f"error: --csv {args.csv} cannot be written.", file=sys.stderr)
            return 1
    from modular import checkpoint, params
    try:
        rows = predict(args.bank, args.task, args.images, args.allow_other_weights)
    except (ValueError, KeyError, checkpoint.CheckpointError, params.SubtreeMismatchError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([("path", "class_index", "class_name"), *rows])
        print(f"wrote {len(rows)} predictions to {args.csv}", flush=True)
    else:
        for row in rows:
            print(",".join(map(str, row)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
