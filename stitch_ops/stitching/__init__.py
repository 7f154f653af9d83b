"""Stitches, switches, the combined network, stitch training and stitch-ensembles.

DESIGN.md, "The method in one page", steps 3-5. Typical use::

    network = StitchedNetwork.from_parents(spec_a, net_a, spec_b, net_b)
    patches = RandomPatches(PreprocessedImages(folder), patch_size, config.batch_size, config.seed)
    train_stitches(network, patches.epoch, config, checkpoint=path)
    ensemble = extract_stitch_ensemble(network, k)   # log of the averaged softmax
"""

from stitch_ops.approaches import StitchMethod
from stitch_ops.stitching.data import PreprocessedImages, RandomPatches
from stitch_ops.stitching.ensemble import (
    StitchEnsemble,
    StitchEnsembleDescription,
    TwoModelEnsemble,
    build_stitch_ensemble,
    description_file,
    extract_stitch_ensemble,
    load_stitch_ensemble,
    log_mean_softmax,
    save_stitch_ensemble,
)
from stitch_ops.stitching.network import (
    PairLosses,
    Parent,
    StitchedNetwork,
    SwitchConfiguration,
    load_stitched_network,
    sample_configuration,
    save_stitched_network,
)
from stitch_ops.stitching.parents import ParentSpec, probe_shape
from stitch_ops.stitching.stitch import MomentSampler, PairStatistics, Stitch
from stitch_ops.stitching.switch import DEFAULT_LOSS_TERMS, LossTerm, Switch, SwitchMode, SwitchOutput
from stitch_ops.stitching.train import EpochLog, StitchTrainingConfig, fit_stitches_least_squares, train_stitches

__all__ = [
    "DEFAULT_LOSS_TERMS",
    "EpochLog",
    "LossTerm",
    "MomentSampler",
    "PairLosses",
    "PairStatistics",
    "Parent",
    "ParentSpec",
    "PreprocessedImages",
    "RandomPatches",
    "Stitch",
    "StitchEnsemble",
    "StitchEnsembleDescription",
    "StitchTrainingConfig",
    "StitchedNetwork",
    "Switch",
    "SwitchConfiguration",
    "SwitchMode",
    "SwitchOutput",
    "StitchMethod",
    "TwoModelEnsemble",
    "build_stitch_ensemble",
    "description_file",
    "extract_stitch_ensemble",
    "fit_stitches_least_squares",
    "load_stitch_ensemble",
    "load_stitched_network",
    "log_mean_softmax",
    "probe_shape",
    "sample_configuration",
    "save_stitch_ensemble",
    "save_stitched_network",
    "train_stitches",
]
