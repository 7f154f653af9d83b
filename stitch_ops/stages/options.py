"""Command-line options that several stages share (parent parsers), defined once."""

from __future__ import annotations

import argparse

from stitch_ops.approaches import FINETUNE_SLUGS, StitchMethod
from stitch_ops.cli_common import common_options
from stitch_ops.config import PARTIES


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def pair_option() -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--pair", required=True, help="dataset pair, a key of params 'data'")
    return parent


def fold_option() -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--fold", type=int, required=True, choices=range(5))
    return parent


def c_option() -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--c", required=True, choices=PARTIES,
                        help="c in a←[c]→b: the party whose unlabeled images train the stitches")
    return parent


def method_option() -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--method", default=StitchMethod.DOUBLE_BATCHED.value, choices=[m.value for m in StitchMethod],
                        help="stitch training: double-batched (default) or direct matching")
    return parent


def finetuned_option() -> argparse.ArgumentParser:
    """The stitching stages' variant: the ``*_finetuned`` stages pass ``--finetuned``."""
    parent = _parent()
    parent.add_argument("--finetuned", action="store_true",
                        help="parents: c's basis model and the other party's model fine-tuned on c's data "
                             "(a←[a]→b→a) instead of the two basis models")
    return parent


def route_option() -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--trained-on", required=True, choices=FINETUNE_SLUGS,
                        help="a_to_b: a's basis model fine-tuned on b's data; b_to_a: the reverse")
    return parent


def stitch_network_options() -> list[argparse.ArgumentParser]:
    """The options of a stage about one stitch network: ``--pair --c --method --fold [--finetuned]``."""
    return [common_options(), pair_option(), c_option(), method_option(), fold_option(), finetuned_option()]
