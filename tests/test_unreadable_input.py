"""Input files that cannot be read to their end (a cut gzip, a file that is not what its name says,
a corrupt Parquet file): a dead letter each, saying from where; the rest of the input is scored;
the summary names the files and the exit status is 3. A backfill commits no partition of such a
run and completes, like a clean run, once the file is fixed."""
from __future__ import annotations

import datetime
import gzip
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from pipelines import backfill, train
from pipelines.generate import generate
from tests.conftest import publish_stand_in_model, read_json_lines
from transforms.errors import IncompleteInput
from transforms.events import EventParser
from transforms.fileio import UNREADABLE_REASON
from transforms.spec import load_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("unreadable")
    manifest = generate("fraud", 3, root / "archive", datetime.date(2026, 3, 1), 1500, 0.02, 11, compress=True)
    files = sorted((root / "archive").glob("*/*.jsonl.gz"))
    publish_stand_in_model(root / "model")
    return {"root": root, "files": files, "manifest": manifest, "model_dir": str(root / "model")}


def _cut(source: pathlib.Path, destination: pathlib.Path) -> list[bytes]:
    """Write the first half of a gzip file's bytes; its lines, whole."""
    data = source.read_bytes()
    destination.write_bytes(data[:len(data) // 2])
    return gzip.decompress(data).splitlines()


def test_batch_scoring_dead_letters_each_unreadable_file_and_scores_the_rest(days, tmp_path):
    good, cut, *_ = days["files"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(good, inputs / "good.jsonl.gz")
    cut_lines = _cut(cut, inputs / "cut.jsonl.gz")
    (inputs / "plain.jsonl.gz").write_bytes(b'{"not": "gzip"}\n')
    (inputs / "broken.parquet").write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")

    done = subprocess.run([sys.executable, "-m", "pipelines.score", "--spec", "fraud", "--mode", "batch",
                           "--input", str(inputs / "*"), "--model_dir", days["model_dir"],
                           "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: 3 input files could not be read to the end")
    for name in ("cut.jsonl.gz", "plain.jsonl.gz", "broken.parquet"):
        assert f"unreadable   {inputs / name}" in done.stdout

    letters = [d for d in read_json_lines(tmp_path / "dead") if d["error"].startswith(UNREADABLE_REASON)]
    where = {pathlib.Path(d["source"]["file"]).name: d["source"] for d in letters}
    assert sorted(where) == ["broken.parquet", "cut.jsonl.gz", "plain.jsonl.gz"]
    assert where["broken.parquet"] == {"file": str(inputs / "broken.parquet"), "row": 1}
    assert where["plain.jsonl.gz"]["line"] == 1
    read = where["cut.jsonl.gz"]["line"] - 1  # the lines before the cut are read; the dead letter is for the rest
    assert 0 < read < len(cut_lines)

    parser = EventParser(load_spec("fraud"))
    valid = lambda lines: {p[0]["event_id"] for p in map(parser.parse, lines) if not isinstance(p, str)}
    expected = valid(gzip.decompress(good.read_bytes()).splitlines()) | valid(cut_lines[:read])
    records = read_json_lines(tmp_path / "scored")
    assert sorted(r["event_id"] for r in records) == sorted(expected)


def test_a_backfill_commits_nothing_from_a_cut_file_and_completes_once_it_is_fixed(days, tmp_path):
    def run(input_glob, out):
        return backfill.run(["--spec", "fraud", "--input", input_glob, "--model_dir", days["model_dir"],
                             "--output", str(out / "scored"), "--dead_letter", str(out / "dead"),
                             "--start", "2026-03-01", "--end", "2026-03-04"])

    run(str(days["root"] / "archive" / "*" / "*.jsonl.gz"), tmp_path / "clean")
    inputs = tmp_path / "in"
    shutil.copytree(days["root"] / "archive", inputs)
    cut = sorted(inputs.glob("*/*.jsonl.gz"))[1]
    _cut(cut, cut)
    with pytest.raises(IncompleteInput, match=f"could not be read to the end \\({cut};"):
        run(str(inputs / "*" / "*.jsonl.gz"), tmp_path / "out")
    assert not list((tmp_path / "out" / "scored").glob(f"*/{backfill.MANIFEST}"))

    shutil.copy(days["root"] / "archive" / cut.relative_to(inputs), cut)
    statuses = run(str(inputs / "*" / "*.jsonl.gz"), tmp_path / "out")
    assert {s["status"] for s in statuses.values()} == {"done"}
    scored = lambda out: {p.relative_to(out): p.read_bytes() for p in (out / "scored").glob("*/scored.jsonl")}
    assert scored(tmp_path / "out") == scored(tmp_path / "clean") and len(scored(tmp_path / "clean")) == 3


def test_training_from_a_cut_file_publishes_nothing(days, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(days["root"] / "archive", inputs)
    cut = sorted(inputs.glob("*/*.jsonl.gz"))[1]
    _cut(cut, cut)
    with pytest.raises(IncompleteInput, match=f"1 input file could not be read to the end \\({cut};.*no model was "
                                              f"trained from the rest"):
        train.run(["--spec", "fraud", "--input", str(inputs / "*" / "*.jsonl.gz"), "--model_dir", str(tmp_path / "m")])
    assert not (tmp_path / "m" / "versions").exists() and not list((tmp_path / "m" / ".staging").iterdir())


def test_gzip_members_and_zero_padding_are_read_whole(tmp_path):
    from transforms.fileio import file_records

    path = tmp_path / "padded.jsonl.gz"
    path.write_bytes(gzip.compress(b"a\nb\n") + gzip.compress(b"c\n") + b"\0" * 512)
    assert [raw.payload for raw in file_records(str(path))] == [b"a", b"b", b"c"]
