"""The main job on embedded defaults: generate archives, train, score unseen days, show where results are.

    python -m pipelines.demo [--out demo]

Generates 19 days of card transactions (1% broken lines), trains the fraud model on the first 14
days, scores the last 5 in batch mode, and prints the model's quality on those unseen days.
"""
import argparse
import datetime
import pathlib
import shutil

from pipelines import score, train
from pipelines.generate import generate

TRAIN_DAYS, LATER_DAYS = 14, 5


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="Directory for everything the demo writes (default: demo).")
    out = pathlib.Path(parser.parse_args(argv).out)
    shutil.rmtree(out, ignore_errors=True)

    manifest = generate("fraud", TRAIN_DAYS + LATER_DAYS, out / "archive", datetime.date(2026, 3, 1), 10_000, 0.01, 7,
                        compress=False)
    for index, day in enumerate(manifest["days"]):  # later days go where training never looks
        part = "train" if index < TRAIN_DAYS else "later"
        (out / part).mkdir(parents=True, exist_ok=True)
        shutil.move(out / "archive" / pathlib.Path(day["file"]).parent, out / part)
    print(f"1/3 generated {sum(d['lines'] for d in manifest['days']):,} lines under {out}/train and {out}/later\n")

    train.run(["--spec", "fraud", "--input", f"{out}/train/*/*.jsonl", "--model_dir", f"{out}/models/fraud"])
    print()
    score.run(["--spec", "fraud", "--mode", "batch", "--input", f"{out}/later/*/*.jsonl",
               "--model_dir", f"{out}/models/fraud", "--output", f"{out}/scored", "--dead_letter", f"{out}/dead_letter"])
    print(f"\n{_quality(out / 'scored')}")


def _quality(scored: pathlib.Path) -> str:
    import orjson
    from sklearn.metrics import average_precision_score, roc_auc_score

    records = [orjson.loads(line) for path in scored.glob("*.jsonl") for line in path.read_bytes().splitlines()]
    labels, scores = [r["is_fraud"] for r in records], [r["score"] for r in records]
    alerts = sum(r["alert"] for r in records)
    return (f"on the {LATER_DAYS} unseen days: ROC AUC {roc_auc_score(labels, scores):.4f}, average precision "
            f"{average_precision_score(labels, scores):.4f}, {alerts:,} alerts for {sum(labels):,} frauds")


if __name__ == "__main__":
    main()
