"""Outputs appear whole or not at all (stitch_ops/outputs.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stitch_ops import outputs
from stitch_ops.errors import InputFileError
from stitch_ops.outputs import (
    CorruptFileError,
    output_dir,
    output_file,
    read_json,
    remove_leftovers,
    write_json,
    write_png,
)


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_output_dir_appears_with_its_content_and_nothing_else(tmp_path):
    target = tmp_path / "out" / "fold_0"
    with output_dir(target) as tmp:
        assert not target.exists() and tmp.is_dir() and tmp.parent == target.parent
        (tmp / "model.json").write_text("{}")
    assert (target / "model.json").read_text() == "{}"
    assert _siblings(target) == ["fold_0"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_output_dir_replaces_an_existing_output_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    target = tmp_path / "fold_0"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with output_dir(target) as tmp:
        assert (target / "old.txt").read_text() == "old"  # the old output stays until the swap
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _siblings(target) == ["fold_0"]


def test_a_failure_inside_the_block_keeps_the_old_output_and_leaves_no_partial(tmp_path):
    target = tmp_path / "fold_0"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed half-way"):
        with output_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert _siblings(target) == ["fold_0"]


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"dice": 0.5})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(target, {"dice": object()})
    assert read_json(target) == {"dice": 0.5}
    assert _siblings(target) == ["summary.json"]


def test_leftovers_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    target = tmp_path / "fold_0"
    stale = tmp_path / f"fold_0.partial-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "half.txt").write_text("half")
    (tmp_path / "fold_0.partial").mkdir()  # the old naming, without a pid
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f"fold_0.partial-{live.pid}"
        busy.mkdir()
        with output_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
        assert _siblings(target) == ["fold_0", busy.name]  # a live writer's folder is not touched
    finally:
        live.kill()
        live.wait()
    assert remove_leftovers(target) == [busy]
    assert _siblings(target) == ["fold_0"]


def test_output_file_refuses_a_block_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with output_file(tmp_path / "positions.csv"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_folder_never_replaces_a_file(tmp_path):
    target = tmp_path / "export"
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="exists but is not a folder"):
        with output_dir(target) as tmp:
            (tmp / "x").write_text("x")
    assert target.read_text() == "a file" and _siblings(target) == ["export"]


def test_read_json_names_a_missing_or_corrupt_file_and_the_fix(tmp_path):
    with pytest.raises(InputFileError, match=r"plans\.json is missing; rerun the plan stage"):
        read_json(tmp_path / "plans.json", hint="rerun the plan stage")
    (tmp_path / "plans.json").write_text('{"configurations": ')
    with pytest.raises(CorruptFileError, match=r"plans\.json is not valid JSON .*rerun the plan stage"):
        read_json(tmp_path / "plans.json", hint="rerun the plan stage")


def test_write_json_round_trips(tmp_path):
    content = {"k": 3, "relative_position": 0.5, "nested": [1, 2]}
    write_json(tmp_path / "a" / "selection.json", content)
    assert read_json(tmp_path / "a" / "selection.json") == content
    assert (tmp_path / "a" / "selection.json").read_text().endswith("}\n")


def test_write_png_round_trips_grey_and_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = np.stack([grey, grey + 1, grey + 2], axis=-1)
    write_png(tmp_path / "grey.png", grey)
    write_png(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grey.png")), grey)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "rgb.png")), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.png", "rgb.png"]
