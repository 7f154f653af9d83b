"""nnU-Net's ``progress.png`` is drawn after the last epoch, and not after every epoch of a
short CPU training (it costs about 1.4 s of CPU each time)."""

from __future__ import annotations

from dataclasses import replace

from stitch_ops.paths import dataset_name
from tests.baselines.tiny_pair import PAIR, TINY, TinyPair
from tests.helpers import kept_global_state


def test_progress_png_is_drawn_after_the_first_and_the_last_epoch_only(tiny_pair: TinyPair, tmp_path, monkeypatch):
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    from stitch_ops.nnunet.train import TrainingRun, train_fold

    draw = LocalLogger.plot_progress_png
    drawn_after: list[int] = []

    def counted(logger: LocalLogger, output_folder: str) -> None:
        drawn_after.append(len(logger.my_fantastic_logging["epoch_end_timestamps"]) - 1)
        draw(logger, output_folder)

    monkeypatch.setattr(LocalLogger, "plot_progress_png", counted)
    schedule = replace(TINY, epochs=4)
    paths = tiny_pair.paths
    with kept_global_state():
        train_fold(TrainingRun(dataset_name(PAIR, "a"), paths.preprocessed_root("a"), tmp_path / "model", 0, schedule),
                   progress=False)
    assert drawn_after == [0, 3]  # four epochs of a few seconds: within one PROGRESS_PLOT_INTERVAL_S
    assert [p.name for p in (tmp_path / "model").rglob("progress.png")]
