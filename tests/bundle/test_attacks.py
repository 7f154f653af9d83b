"""A received model tried as an attacker would (issue 23): every payload is built here from a
real exported model, for every command that opens a model and every source kind; the sentinel
file a payload would create never appears, and each refusal is one line, exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from stitch_ops.bundle.archive import safe_extract
from stitch_ops.bundle.export import INFERENCE_CONFIG, ExportInfo, export_bundle
from stitch_ops.bundle.manifest import MANIFEST, write_manifest
from stitch_ops.bundle.sources import open_model
from stitch_ops.bundle.verify import PROJECT_TARGETS, BundleError, verify_bundle
from stitch_ops.cli import main as cli_main
from stitch_ops.limits import TooLargeError
from stitch_ops.nnunet.model import ModelError
from tests.bundle.institutions import Institution, add_validation_summary
from tests.helpers import REPO

KINDS = ("bundle folder", "bundle zip", "results folder", "nnU-Net zip")
COMMANDS = ("verify", "predict", "stitch", "export")


def zip_folder(folder: Path, archive: Path, under: str) -> Path:
    """``folder``'s files in ``archive`` below ``under/`` (how export and nnU-Net lay them out)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            handle.write(path, f"{under}/{path.relative_to(folder).as_posix()}")
    return archive


class Sources:
    """One real model of institution A in each source kind, copied fresh for each payload."""

    def __init__(self, institution: Institution, root: Path):
        self.results = institution.results
        self.bundle = export_bundle(open_model(institution.results), root / "bundle", ExportInfo(), make_zip=False)

    def make(self, kind: str, target: Path, edit: Callable[[Path], None] = lambda folder: None) -> Path:
        """A copy of the model as ``kind`` under ``target``, after ``edit`` changed its folder
        (a bundle's manifest is rewritten after the edit: a consistent forgery)."""
        target.mkdir(parents=True, exist_ok=True)
        if kind.startswith("bundle"):
            folder = shutil.copytree(self.bundle, target / "received")
            edit(folder)
            write_manifest(folder)
            return folder if kind == "bundle folder" else zip_folder(folder, target / "received.zip", "received")
        dataset = self.results.parent.name
        folder = shutil.copytree(self.results, target / dataset / self.results.name)
        edit(folder)
        if kind == "results folder":
            return folder
        add_validation_summary(folder)
        return zip_folder(target / dataset, target / "received.zip", dataset)


@pytest.fixture(scope="module")
def sources(institution_a: Institution, tmp_path_factory: pytest.TempPathFactory) -> Sources:
    return Sources(institution_a, tmp_path_factory.mktemp("sources"))


def plans_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("plans.json")]


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def run_command(command: str, source: Path, institution_b: Institution, out: Path, capsys) -> tuple[int, str]:
    """One command a receiver runs on ``source``, in process; (exit status, stderr)."""
    images = institution_b.raw / "imagesTr"
    argv = {"verify": ["bundle", "verify", str(source)],
            "predict": ["predict", "--model", str(source), "--input", str(images), "--out", str(out),
                        "--no-progress"],
            "stitch": ["stitch", "--own", str(institution_b.results), "--other", str(source), "--images", str(images),
                       "--out", str(out), "--epochs", "1", "--iterations-per-epoch", "1", "--no-progress"],
            "export": ["bundle", "export", "--model", str(source), "--out", str(out)]}[command]
    status = cli_main(argv)
    return status, capsys.readouterr().err


def refused(status: int, err: str, *phrases: str) -> None:
    assert status == 2, err
    assert err.count("\n") == 1 and ": error: " in err, err
    assert "stitch_ops_model_" not in err and "stitch_ops_verify_" not in err, err  # the user's path, not a temp one
    for phrase in phrases:
        assert phrase in err, err


# 1. architecture names in plans.json ---------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_plans_name_walking_to_os_system_never_runs(sources: Sources, institution_b: Institution, kind: str,
                                                      command: str, tmp_path: Path, capsys):
    sentinel = tmp_path / "sentinel"

    def walk_to_os_system(folder: Path) -> None:
        def change(plans: dict) -> None:
            arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
            arch["nonlin"] = "torch.nn.modules.module.torch.os.system"
            arch["nonlin_kwargs"] = {"command": f"touch {sentinel}"}
        for path in plans_files(folder):
            edit_json(path, change)

    source = sources.make(kind, tmp_path / "in", walk_to_os_system)
    status, err = run_command(command, source, institution_b, tmp_path / "out", capsys)
    refused(status, err, "nonlin='torch.nn.modules.module.torch.os.system'", "nothing was imported", str(source))
    assert not sentinel.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, name", [
    ("network_class_name", "os.system"),
    ("network_class_name", "torch.nn.modules.module.torch.os.system"),
    ("network_class_name", "dynamic_network_architectures.architectures.unet.os.system"),
    ("network_class_name", "torch.nn.Conv2d"),  # a torch layer is not a network
    ("conv_op", "torch.nn.modules.conv.F.conv2d"),  # a function, not a class
    ("norm_op", "torch.hub.load"),
    ("dropout_op", "subprocess.Popen"),
    ("nonlin", "torch.nn.modules.module.Module"),  # a Module, but not an allowed layer
    ("nonlin", "builtins.eval"),
])
def test_every_imported_name_must_be_an_allowed_class(sources: Sources, key: str, name: str, tmp_path: Path):
    def change(plans: dict) -> None:
        architecture = plans["configurations"]["2d"]["architecture"]
        (architecture if key == "network_class_name" else architecture["arch_kwargs"])[key] = name

    source = sources.make("results folder", tmp_path, lambda folder: edit_json(folder / "plans.json", change))
    with pytest.raises(ModelError, match=f"names {key}='{name}', which is not (one of|an allowed)"):
        open_model(source)


def test_another_kw_requires_import_entry_is_checked_too(sources: Sources, tmp_path: Path):
    sentinel = tmp_path / "sentinel"

    def change(plans: dict) -> None:
        architecture = plans["configurations"]["2d"]["architecture"]
        architecture["arch_kwargs"]["block"] = "torch.nn.modules.module.torch.os.system"
        architecture["_kw_requires_import"] = [*architecture["_kw_requires_import"], "block"]

    source = sources.make("results folder", tmp_path, lambda folder: edit_json(folder / "plans.json", change))
    with pytest.raises(ModelError, match="names block='torch.nn.modules.module.torch.os.system'"):
        open_model(source)
    assert not sentinel.exists()


def test_the_allowed_spellings_are_what_nnunet_writes(sources: Sources):
    plans = json.loads((sources.results / "plans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]
    assert arch["arch_kwargs"]["conv_op"] == "torch.nn.modules.conv.Conv2d"  # nnU-Net's own plans open
    assert open_model(sources.results).folds == [0]


def test_a_network_too_large_for_the_limit_is_refused_before_it_is_built(sources: Sources, tmp_path: Path):
    def wide(plans: dict) -> None:
        plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 100_000]

    source = sources.make("results folder", tmp_path, lambda folder: edit_json(folder / "plans.json", wide))
    tracemalloc.start()
    with pytest.raises(TooLargeError, match=r"the network the plans' '2d' configuration describes .* "
                                            r"STITCH_OPS_MAX_FILE_MB"):
        open_model(source)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6


# 2. MONAI configs -------------------------------------------------------------------------

def hub_attack(sentinel: Path) -> Callable[[Path], None]:
    """``_target_: torch.hub.load`` of the bundle's own ``hubconf.py``."""
    def edit(folder: Path) -> None:
        (folder / "hubconf.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
        edit_json(folder / "configs" / "inference.json", lambda c: c.update(
            network_def={"_target_": "torch.hub.load", "repo_or_dir": "@bundle_root", "model": "anything",
                         "source": "local"}, run=["@network_def"]))
    return edit


def meta_attack(sentinel: Path) -> Callable[[Path], None]:
    """An ``@_meta_#...`` reference in a config to a ``$`` expression in metadata.json."""
    def edit(folder: Path) -> None:
        edit_json(folder / "configs" / "metadata.json",
                  lambda m: m.update(intended_use=f"$open({str(sentinel)!r}, 'w').close()"))
        edit_json(folder / "configs" / "inference.json", lambda c: c.update(run=["@_meta_#intended_use"]))
    return edit


def logging_attack(sentinel: Path) -> Callable[[Path], None]:
    """``configs/logging.conf``, which MONAI loads by itself: a FileHandler appending to any file."""
    def edit(folder: Path) -> None:
        (folder / "configs" / "logging.conf").write_text(
            "[loggers]\nkeys=root\n\n[handlers]\nkeys=file\n\n[formatters]\nkeys=plain\n\n"
            "[logger_root]\nlevel=INFO\nhandlers=file\n\n"
            f"[handler_file]\nclass=FileHandler\nlevel=INFO\nformatter=plain\nargs=({str(sentinel)!r}, 'a')\n\n"
            "[formatter_plain]\nformat=%(message)s\n")
        edit_json(folder / "configs" / "inference.json", lambda c: c.update(run=[]))
    return edit


CONFIG_ATTACKS = {"torch.hub.load + hubconf.py": (hub_attack, "hubconf.py"),
                  "@_meta_ to a $ expression": (meta_attack, "metadata.json#intended_use: $open("),
                  "logging.conf": (logging_attack, "configs/logging.conf")}


@pytest.mark.parametrize("attack", CONFIG_ATTACKS)
@pytest.mark.parametrize("kind", ("bundle folder", "bundle zip"))
def test_config_attacks_are_refused_by_verify(sources: Sources, attack: str, kind: str, tmp_path: Path, capsys):
    sentinel = tmp_path / "sentinel"
    make, phrase = CONFIG_ATTACKS[attack]
    source = sources.make(kind, tmp_path / "in", make(sentinel))
    status = cli_main(["bundle", "verify", str(source)])
    refused(status, capsys.readouterr().err, phrase)
    assert not sentinel.exists()


@pytest.mark.slow
@pytest.mark.parametrize("attack", CONFIG_ATTACKS)
def test_monai_runs_the_config_attacks_that_verify_refuses(sources: Sources, attack: str, tmp_path: Path, capsys):
    """The payloads are real: `python -m monai.bundle run` on the bundle runs them (the sentinel
    appears), where `stitch-ops bundle verify` first refused the bundle."""
    sentinel = tmp_path / "sentinel"
    make, _ = CONFIG_ATTACKS[attack]
    bundle = sources.make("bundle folder", tmp_path / "in", make(sentinel))
    assert cli_main(["bundle", "verify", str(bundle)]) == 2
    capsys.readouterr()
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                    str(bundle / "configs" / "inference.json"), "--meta_file",
                    str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle)],
                   cwd=tmp_path, capture_output=True, timeout=600)
    assert sentinel.exists()


def test_a_verified_bundle_can_name_only_the_projects_workflow_functions():
    import pydoc

    used = set()
    for config in [INFERENCE_CONFIG, *(json.loads(p.read_text()) for p in (REPO / "bundles").glob("*/configs/*.json"))]:
        stack = [config]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                used |= {value["_target_"]} if "_target_" in value else set()
                stack += list(value.values())
            elif isinstance(value, list):
                stack += value
    assert used == PROJECT_TARGETS
    for name in PROJECT_TARGETS:
        found = pydoc.locate(name)
        assert found is not None and found.__module__ + "." + found.__qualname__ == name
        assert found.__module__ in ("stitch_ops.bundle.workflows", "stitch_ops.baselines.workflows",
                                    "stitch_ops.config")


@pytest.mark.parametrize("change, phrase", [
    ({"output_dir": "%/etc/hostname"}, "inference.json#output_dir: %/etc/hostname"),
    ({"inference": {"_target_": "stitch_ops.bundle.workflows.segment", "_mode_": "debug"}}, "MONAI's _mode_ key"),
    ({"inference": {"_target_": "stitch_ops.bundle.workflows.segment", "_requires_": "@device"}},
     "MONAI's _requires_ key"),
    ({"run": ["@_meta_#name"]}, "@_meta_#name (a reference outside this config)"),
    ({"network_def": {"_target_": "stitch_ops.bundle.workflows.segment.__globals__"}},
     "network_def#_target_: stitch_ops.bundle.workflows.segment.__globals__"),
    ({"output_dir": "/home"}, "inference.json#output_dir: /home (a path outside the folder MONAI runs in)"),
    ({"output_dir": "predictions/../../.ssh"}, "predictions/../../.ssh (a path outside"),
    ({"input_dir": "~/.config"}, "input_dir: ~/.config (a path outside"),
])
def test_other_ways_of_running_code_from_a_config(sources: Sources, change: dict, phrase: str, tmp_path: Path):
    bundle = sources.make("bundle folder", tmp_path, lambda folder: edit_json(
        folder / "configs" / "inference.json", lambda c: c.update(change)))
    with pytest.raises(BundleError, match="carries code") as err:
        verify_bundle(bundle)
    assert phrase in str(err.value)


@pytest.mark.parametrize("name", ["hubconf.py", "configs/logging.conf", "models/helper.py", "configs/inference.yaml",
                                  "docs/run.sh", "configs/evaluate.json"])
def test_files_a_bundle_never_holds_are_refused(sources: Sources, name: str, tmp_path: Path):
    def add(folder: Path) -> None:
        (folder / name).write_text("x = 1\n")

    bundle = sources.make("bundle folder", tmp_path, add)
    with pytest.raises(BundleError, match=f"holds {name}, which a bundle of this project never contains"):
        verify_bundle(bundle)


# 3. the manifest, wherever a model is opened -----------------------------------------------

def flip_weight_byte(folder: Path) -> None:
    weights = folder / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ("bundle folder", "bundle zip"))
@pytest.mark.parametrize("command", COMMANDS)
def test_a_changed_weight_byte_is_refused_by_every_command(sources: Sources, institution_b: Institution, kind: str,
                                                           command: str, tmp_path: Path, capsys):
    good = sources.make(kind, tmp_path / "in")
    if kind == "bundle folder":
        flip_weight_byte(good)
        source = good
    else:  # the zip's bytes changed after export: rebuild it from a tampered copy, manifest kept
        folder = tmp_path / "unzipped"
        safe_extract(good, folder)
        flip_weight_byte(folder / "received")
        source = zip_folder(folder / "received", tmp_path / "tampered.zip", "received")
    status, err = run_command(command, source, institution_b, tmp_path / "out", capsys)
    refused(status, err, "models/model.pt does not match its SHA-256 in manifest.sha256", str(source))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line", ["/etc/hostname", "../outside.txt", "models/../../outside.txt", "models\\model.pt"])
def test_a_manifest_line_outside_the_bundle_is_refused(sources: Sources, line: str, tmp_path: Path):
    (tmp_path / "outside.txt").write_text("x")
    bundle = sources.make("bundle folder", tmp_path / "in")
    with (bundle / MANIFEST).open("a") as manifest:
        manifest.write(f"{'0' * 64}  {line}\n")
    with pytest.raises(ModelError, match="is not a file inside the bundle"):
        open_model(bundle)
    with pytest.raises(BundleError, match="is not a file inside the bundle"):
        verify_bundle(bundle)


def test_a_bundle_without_its_manifest_is_refused_when_opened(sources: Sources, tmp_path: Path):
    bundle = sources.make("bundle folder", tmp_path)
    (bundle / MANIFEST).unlink()
    with pytest.raises(ModelError, match="ships models/ but no manifest.sha256"):
        open_model(bundle)


# 4. sizes ----------------------------------------------------------------------------------

def zero_bomb(archive: Path, megabytes: int, inside: str = "received/models/model.pt") -> Path:
    """A zip with ``megabytes`` MB of zeros in one entry (about 1000:1), written in chunks."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("received/configs/metadata.json", "{}")
        with handle.open(inside, "w", force_zip64=True) as entry:
            for _ in range(megabytes):
                entry.write(bytes(1024 * 1024))
    return archive


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zero_bomb(tmp_path_factory.mktemp("bomb") / "bomb.zip", 200)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_zip_bomb_is_refused_before_anything_is_extracted(bomb: Path, institution_b: Institution, command: str,
                                                            tmp_path: Path, capsys, monkeypatch):
    assert bomb.stat().st_size < 1e6
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    tracemalloc.start()
    status, err = run_command(command, bomb, institution_b, tmp_path / "out", capsys)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    refused(status, err, "entry 'received/models/model.pt' (a zip bomb?) has a compression ratio", "STITCH_OPS_MAX_RATIO",
            str(bomb))
    assert peak < 20e6  # nothing read whole
    assert sum(p.stat().st_size for p in (tmp_path / "scratch").rglob("*") if p.is_file()) == 0  # nothing written


def test_each_limit_can_be_set_small(sources: Sources, tmp_path: Path, monkeypatch):
    archive = zero_bomb(tmp_path / "bomb.zip", 3)
    monkeypatch.setenv("STITCH_OPS_MAX_RATIO", "100000")
    monkeypatch.setenv("STITCH_OPS_MAX_FILE_MB", "2")
    with pytest.raises(TooLargeError, match=r"entry 'received/models/model.pt' unpacked is 3.0 MB, more than the "
                                            r"2 MB allowed \(STITCH_OPS_MAX_FILE_MB\)"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("STITCH_OPS_MAX_FILE_MB", "1024")
    monkeypatch.setenv("STITCH_OPS_MAX_TOTAL_MB", "1")
    with pytest.raises(TooLargeError, match=r"bomb.zip unpacked is 3.0 MB, more than the 1 MB allowed"):
        safe_extract(archive, tmp_path / "out")
    monkeypatch.setenv("STITCH_OPS_MAX_ENTRIES", "1")
    with pytest.raises(TooLargeError, match=r"the number of entries is 2, more than the 1 allowed"):
        safe_extract(archive, tmp_path / "out")
    monkeypatch.delenv("STITCH_OPS_MAX_TOTAL_MB")
    monkeypatch.delenv("STITCH_OPS_MAX_ENTRIES")

    # a folder: a weights file over the limit is refused before it is hashed or loaded
    bundle = sources.make("bundle folder", tmp_path / "in")
    monkeypatch.setenv("STITCH_OPS_MAX_FILE_MB", "0.001")
    with pytest.raises(TooLargeError, match=r"is [\d,]+ bytes, more than the 1,048 bytes allowed \(STITCH_OPS_MAX_FILE_MB\)"):
        open_model(bundle)
    with pytest.raises(TooLargeError, match=r"fold_0/checkpoint_final.pth is [\d,]+ bytes, more than the 1,048 bytes"):
        open_model(sources.results)  # a checkpoint: refused before torch.load reads it
    monkeypatch.setenv("STITCH_OPS_MAX_FILE_MB", "many")
    with pytest.raises(ValueError, match="STITCH_OPS_MAX_FILE_MB='many' is not a number"):
        open_model(bundle)


def test_a_declared_shape_over_the_limit_is_refused(sources: Sources, tmp_path: Path, capsys, monkeypatch):
    def huge(folder: Path) -> None:
        edit_json(folder / "configs" / "metadata.json", lambda m: m["network_data_format"]["inputs"]["image"].update(
            spatial_shape=[1024, 1024]))

    bundle = sources.make("bundle folder", tmp_path, huge)
    tracemalloc.start()
    status = cli_main(["bundle", "verify", str(bundle)])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    refused(status, capsys.readouterr().err, "the declared input shape [1024, 1024] in voxels is 1,048,576, more "
                                             "than the 262,144 allowed (STITCH_OPS_MAX_VOXELS)")
    assert peak < 50e6
    monkeypatch.setenv("STITCH_OPS_MAX_VOXELS", "16")
    with pytest.raises(BundleError, match="in voxels is 64, more than the 16 allowed"):
        verify_bundle(sources.make("bundle folder", tmp_path / "small"))


# 5. smaller ones of the same family --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_verify_takes_every_source_kind_names_it_and_the_next_command(sources: Sources, kind: str, tmp_path: Path,
                                                                      capsys):
    source = sources.make(kind, tmp_path)
    assert cli_main(["bundle", "verify", str(source)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{source}: ") and "stitch_ops_verify_" not in out
    expected = {"bundle folder": "MONAI bundle", "bundle zip": "MONAI bundle", "results folder": "nnU-Net results folder",
                "nnU-Net zip": "nnU-Net export zip"}[kind]
    assert expected in out
    assert f"next: use it with `stitch-ops predict --model {source} " in out and f"--other {source} " in out
    if kind.startswith("nnU-Net") or kind == "results folder":
        assert f"`stitch-ops bundle export --model {source} --out DIR`" in out


def test_code_in_an_nnunet_source_is_refused(sources: Sources, tmp_path: Path):
    source = sources.make("nnU-Net zip", tmp_path, lambda folder: (folder / "fold_0" / "hubconf.py").write_text("1"))
    with pytest.raises(BundleError, match=r"received.zip holds .*fold_0/hubconf.py: code has no place in a model"):
        verify_bundle(source)


def test_an_extra_label_names_the_mismatched_layer(sources: Sources, tmp_path: Path, capsys):
    source = sources.make("results folder", tmp_path, lambda folder: edit_json(
        folder / "dataset.json", lambda d: d["labels"].update(lesion=2)))
    status = cli_main(["bundle", "verify", str(source)])
    err = capsys.readouterr().err
    refused(status, err, "has shape (2,", "the network expects (3,", "dataset.json's labels are not those")
    assert not err.rstrip().endswith(":")


def test_label_names_in_metadata_must_be_the_models(sources: Sources, tmp_path: Path):
    def rename(folder: Path) -> None:
        edit_json(folder / "configs" / "metadata.json", lambda m: m["network_data_format"]["outputs"]["pred"].update(
            channel_def={"0": "background", "1": "tumour"}))

    with pytest.raises(BundleError, match=r"names the output channels .*tumour.*, but the model's dataset.json labels"):
        verify_bundle(sources.make("bundle folder", tmp_path, rename))


def test_export_out_on_an_existing_file_is_refused_before_any_work(sources: Sources, tmp_path: Path, capsys):
    (tmp_path / "taken").write_text("mine")
    status = cli_main(["bundle", "export", "--model", str(sources.results), "--out", str(tmp_path / "taken")])
    refused(status, capsys.readouterr().err, "taken exists and is not a folder", "nothing was written")
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_export_killed_between_folder_and_zip_leaves_no_old_zip_beside_the_new_folder(
        sources: Sources, tmp_path: Path, monkeypatch):
    model = open_model(sources.results)
    target = export_bundle(model, tmp_path / "export", ExportInfo(trained_on="first"))
    old_zip = target.with_name("export.zip")
    assert old_zip.is_file()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("stitch_ops.bundle.export.swap_in", killed)  # killed as the zip would be swapped in
    with pytest.raises(KeyboardInterrupt):
        export_bundle(model, target, ExportInfo(trained_on="second"))
    assert "second" in (target / "configs" / "metadata.json").read_text()
    assert not old_zip.exists()  # never a new folder beside an old zip that still verifies
    monkeypatch.undo()
    export_bundle(model, target, ExportInfo(trained_on="third"))
    assert verify_bundle(old_zip).metadata["data_source"] == "third"
    assert not list(tmp_path.glob("*.partial*"))


def test_every_workflow_a_config_can_call_opens_models_through_the_checks(sources: Sources, institution_b: Institution,
                                                                          tmp_path: Path):
    from stitch_ops.baselines.workflows import segment_ensemble
    from stitch_ops.bundle.workflows import bundle_network, segment

    tampered = sources.make("bundle folder", tmp_path / "in")
    flip_weight_byte(tampered)
    images, out = institution_b.raw / "imagesTr", tmp_path / "out"
    for call in (lambda: segment(tampered, images, out), lambda: bundle_network(tampered),
                 lambda: segment_ensemble([sources.results, tampered], images, out)):
        with pytest.raises(ModelError, match="models/model.pt does not match its SHA-256"):
            call()
    assert not out.exists()
