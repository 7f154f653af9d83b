"""The bundle definitions' ``configs/metadata.json`` come from one template
(``stitch-ops bundle definitions``); the committed files must be what it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from stitch_ops.bundle.__main__ import main as bundle_main
from stitch_ops.bundle.definitions import TEXTS, metadata, stale
from stitch_ops.bundle.verify import SCHEMA_FILE

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_definitions_are_what_the_template_writes():
    assert stale(REPO) == [], "run `stitch-ops bundle definitions` and commit bundles/*/configs/metadata.json"
    assert sorted(p.name for p in (REPO / "bundles").iterdir() if p.is_dir()) == sorted(TEXTS)


def test_check_names_an_edited_definition_and_writing_restores_it(tmp_path: Path, capsys):
    shutil.copytree(REPO / "bundles", tmp_path / "bundles")
    edited = tmp_path / "bundles" / "merged" / "configs" / "metadata.json"
    edited.write_text(json.dumps({**metadata("merged"), "name": "edited by hand"}, indent=4) + "\n")
    assert bundle_main(["definitions", "--check", "--root", str(tmp_path)]) == 2
    assert str(edited) in capsys.readouterr().err
    assert bundle_main(["definitions", "--root", str(tmp_path)]) == 0
    assert json.loads(edited.read_text()) == metadata("merged") and stale(tmp_path) == []


def test_every_definition_has_the_specification_keys_the_schema_requires():
    required = json.loads(SCHEMA_FILE.read_text())["required"]
    for approach in TEXTS:
        assert set(required) <= set(metadata(approach)), approach
