"""The data stages of ``dvc.yaml`` as typed functions; ``__main__`` is a thin shell over them.

- :func:`prepare`: a pair's two source datasets, generated (``source: synthetic``) or copied
  from two existing nnU-Net raw datasets after checking they are compatible;
- :func:`split`: the paper's six-part split into the working nnU-Net raw datasets.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from stitch_ops.config import PARTIES, Params
from stitch_ops.data.raw import check_compatible, validate_raw_dataset
from stitch_ops.data.splits import SplitRecord, split_raw_dataset
from stitch_ops.data.synthetic import generate_pair
from stitch_ops.outputs import output_dir
from stitch_ops.paths import PairPaths, dataset_name

logger = logging.getLogger(__name__)


def prepare(pair: str, params: Params, *, root: Path = Path("."), progress: bool = True) -> Path:
    """Write ``data/{pair}/source/{a,b}`` (whole or not at all); returns the source folder."""
    settings = params.pair(pair)
    with output_dir(PairPaths(pair, root).source) as staging:
        if settings.is_synthetic:
            logger.info("generating the synthetic %s pair: %s cases", pair, dict(settings.cases))
            generate_pair(pair, staging, settings.cases, params.seed, image_size=settings.image_size,
                          progress=progress)
        else:
            infos = {party: validate_raw_dataset(Path(settings.source[party])) for party in PARTIES}
            check_compatible(*(infos[p] for p in PARTIES))
            for party in PARTIES:
                logger.info("copying party %s of %s from %s", party, pair, settings.source[party])
                shutil.copytree(Path(settings.source[party]), staging / party)
        for party in PARTIES:
            validate_raw_dataset(staging / party)
    return PairPaths(pair, root).source


def split(pair: str, params: Params, *, root: Path = Path(".")) -> dict[str, SplitRecord]:
    """Split each party's source dataset into its working dataset (test part + five folds)."""
    params.pair(pair)
    paths = PairPaths(pair, root)
    records = {}
    for party in PARTIES:
        record = split_raw_dataset(paths.source / party, paths.raw_root / dataset_name(pair, party), params.seed)
        logger.info("%s party %s (%s split): %d test cases, validation parts of %s cases", pair, party,
                    record.method.value, len(record.test_cases), [len(f.val) for f in record.folds])
        records[party] = record
    return records
