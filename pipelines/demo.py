"""The main job on embedded defaults: generate archives, train, score and monitor unseen days, report them.

    python -m pipelines.demo [--out demo] [--spec offers]

Generates 19 days of card transactions (1% broken lines), trains the fraud model on the first 14
days, scores the last 5 in batch mode, monitors them in hourly windows, and writes the report
(``rtml report``: drift, rates, scores, ROC and precision-recall) whose path it prints last, with
the model's quality on those unseen days. With ``--spec offers``, the same for next-best-offer:
shop customers' events, a model that ranks 8 offers with per-customer features, and its top-3 hit
rate and calibration on the unseen days.
"""
import argparse
import datetime
import pathlib
import shutil

from pipelines import cli, monitor, report, score, train
from transforms.errors import UserError
from pipelines.generate import generate

TRAIN_DAYS, LATER_DAYS = 14, 5
EVENTS_PER_DAY = {"fraud": 10_000, "offers": 5_000}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="Directory for everything the demo writes (default: demo).")
    parser.add_argument("--spec", default="fraud", choices=EVENTS_PER_DAY,
                        help="fraud: card transactions (default); offers: next best offer for shop customers")
    args = parser.parse_args(argv)
    out, spec = pathlib.Path(args.out), args.spec
    missing = cli.missing_extra("report", "plotly", "sklearn")  # said before minutes of work, not after them
    if missing:
        raise UserError(f"the demo ends with its report: {missing}")
    shutil.rmtree(out, ignore_errors=True)

    manifest = generate(spec, TRAIN_DAYS + LATER_DAYS, out / "archive", datetime.date(2026, 3, 1), EVENTS_PER_DAY[spec], 0.01,
                        7, compress=False)
    for index, day in enumerate(manifest["days"]):  # later days go where training never looks
        part = "train" if index < TRAIN_DAYS else "later"
        (out / part).mkdir(parents=True, exist_ok=True)
        shutil.move(out / "archive" / pathlib.Path(day["file"]).parent, out / part)
    print(f"generated {sum(d['lines'] for d in manifest['days']):,} lines under {out}/train and {out}/later\n")

    models, later = f"{out}/models/{spec}", f"{out}/later/*/*.jsonl"
    train.run(["--spec", spec, "--input", f"{out}/train/*/*.jsonl", "--model_dir", models])
    print()
    score.run(["--spec", spec, "--mode", "batch", "--input", later, "--model_dir", models,
               "--output", f"{out}/scored", "--dead_letter", f"{out}/dead_letter"])
    print()
    monitor.run(["--spec", spec, "--input", later, "--model_dir", models, "--output", f"{out}/monitoring",
                 "--window_s", "3600"])
    print()
    sections = report.run(["--spec", spec, "--report", f"{out}/report.html", "--model_dir", models,
                           "--monitoring", f"{out}/monitoring", "--scored", f"{out}/scored/*.jsonl"])
    quality = next(section.finding for section in sections if section.title in (report.QUALITY, report.CLASS_QUALITY))
    print(f"\non the {LATER_DAYS} unseen days: {quality}\nopen {(out / 'report.html').resolve()} in a browser")


if __name__ == "__main__":
    cli.main(main)
