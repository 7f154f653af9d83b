"""The approaches of the paper's Table 2 that this subpackage builds, as small typed records.

Every model an approach produces is identified by its *approach* slug and its
*trained-on* slug (folders ``models|predictions|metrics/{pair}/{approach}/{trained_on}/fold_k``
and the MLflow tags of the same names). The *perspective* is the party whose data the
approach used and from whose point of view it is feasible (``both`` when it needs no
party's data or both parties' data); the *shorthand* is the paper's notation.

==========================  ======================  ==================  ===========  ==============
approach                    trained-on slug         shorthand           perspective  data it used
==========================  ======================  ==================  ===========  ==============
``finetune``                ``a_to_b``, ``b_to_a``  ``a→b``, ``b→a``    b, a         other's model, own data
``ensemble``                ``a_and_b``             ``a&b``             both         models only
``ensemble_finetuned``      ``a_and_b_to_a`` / _b   ``a&b→a`` / ``a&b→b``  a, b      own data
``federated``               ``a_fed_b``             ``a‖b``             both         both, never pooled
``merged``                  ``a_plus_b``            ``a+b``             both         both, pooled
``stitch``                  ``via_c_{method}``      ``a←[c]→b``         c            c's images
``stitch``                  ``via_c_{method}_finetuned``  ``a←[a]→b→a``  c          c's data
``stitch``                  ``no_stitch_via_c[_finetuned]``  ``… (no stitch)``  c    c's preprocessing
==========================  ======================  ==================  ===========  ==============

A stitch-ensemble slug chosen by selection strategy 2 or 3 ends in ``_all_folds`` /
``_rule_of_thumb`` (tag ``selection``); strategy 1 (``current_fold``) keeps the plain slug.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from stitch_ops.config import PARTIES

BOTH = "both"


class Approach(StrEnum):
    """Approach slugs (filesystem and MLflow tag ``approach``)."""

    LOCAL = "local"
    FINETUNE = "finetune"
    ENSEMBLE = "ensemble"
    ENSEMBLE_FINETUNED = "ensemble_finetuned"
    FEDERATED = "federated"
    MERGED = "merged"
    STITCH = "stitch"


def other(party: str) -> str:
    """The other party of the pair (``a`` ↔ ``b``)."""
    if party not in PARTIES:
        raise ValueError(f"party must be one of {PARTIES}, got {party!r}")
    return PARTIES[1 - PARTIES.index(party)]


@dataclass(frozen=True)
class ModelId:
    """One model of one approach: its slugs, its shorthand and its perspective."""

    approach: Approach
    trained_on: str
    shorthand: str
    perspective: str
    selection: str | None = None  # stitch-ensembles: the selection strategy that chose k

    def tags(self) -> dict[str, str]:
        """The MLflow tags this model adds to the evaluation run."""
        tags = {"perspective": self.perspective, "shorthand": self.shorthand}
        return tags if self.selection is None else {**tags, "selection": self.selection}


def finetuned(party: str) -> ModelId:
    """``other→party``: the other party's basis model fine-tuned on ``party``'s data."""
    source = other(party)
    return ModelId(Approach.FINETUNE, f"{source}_to_{party}", f"{source}→{party}", party)


def finetuning_party(trained_on: str) -> str:
    """The fine-tuning party of a fine-tuned model's slug: ``a_to_b`` → ``b``.

    Raises:
        ValueError: ``trained_on`` is not ``a_to_b`` or ``b_to_a``.
    """
    slugs = {finetuned(p).trained_on: p for p in PARTIES}
    if trained_on not in slugs:
        raise ValueError(f"a fine-tuned model is one of {sorted(slugs)} (other party's model → own data), "
                         f"got {trained_on!r}")
    return slugs[trained_on]


def ensemble() -> ModelId:
    """``a&b``: the two basis models' softmax averaged."""
    return ModelId(Approach.ENSEMBLE, "a_and_b", "a&b", BOTH)


def ensemble_finetuned(party: str) -> ModelId:
    """``a&b→party``: own basis model averaged with the other's model fine-tuned on own data."""
    return ModelId(Approach.ENSEMBLE_FINETUNED, f"a_and_b_to_{party}", f"a&b→{party}", party)


def federated() -> ModelId:
    """``a‖b``: FedAvg of both parties' training, data never pooled."""
    return ModelId(Approach.FEDERATED, "a_fed_b", "a‖b", BOTH)


def merged() -> ModelId:
    """``a+b``: one model on the pooled data (needs data sharing: the upper bound)."""
    return ModelId(Approach.MERGED, "a_plus_b", "a+b", BOTH)


def local(party: str) -> ModelId:
    """``a``: the basis model trained on ``party``'s own data (issue 2)."""
    return ModelId(Approach.LOCAL, party, party, party)


STITCH_METHODS = ("double_batched", "direct_matching")
SELECTION_STRATEGIES = ("current_fold", "all_folds", "rule_of_thumb")
"""Selection strategies 1, 2, 3 (DESIGN.md, "Selecting k"); the first is the stitch-ensemble's default slug."""


def stitch_slug(data_party: str, method: str, finetuned: bool = False) -> str:
    """Folder slug of a stitch network: ``via_a_double_batched``, ``via_a_double_batched_finetuned``."""
    return f"via_{data_party}_{method}" + ("_finetuned" if finetuned else "")


def stitch_shorthand(data_party: str, finetuned: bool = False) -> str:
    """``a←[c]→b``, or ``a←[a]→b→a`` / ``b←[b]→a→b`` when the other parent is fine-tuned on c's data."""
    if finetuned:
        return f"{data_party}←[{data_party}]→{other(data_party)}→{data_party}"
    return f"a←[{data_party}]→b"


def stitch_ensemble(data_party: str, method: str, finetuned: bool = False,
                    selection: str = SELECTION_STRATEGIES[0]) -> ModelId:
    """A stitch-ensemble at the position k chosen by ``selection`` on c's validation cases.

    ``a←[c]→b`` (``finetuned=False``): the two basis models, stitches trained on c's unlabeled
    data (issue 3). ``a←[a]→b→a`` (``finetuned=True``): c's basis model and the other party's
    model fine-tuned on c's data (``finetune`` approach, ``other→c``), stitches on c's data.
    Strategy 1 keeps the plain slug; strategies 2 and 3 append their name.
    """
    if selection not in SELECTION_STRATEGIES:
        raise ValueError(f"selection must be one of {SELECTION_STRATEGIES}, got {selection!r}")
    slug = stitch_slug(data_party, method, finetuned)
    if selection != SELECTION_STRATEGIES[0]:
        slug = f"{slug}_{selection}"
    return ModelId(Approach.STITCH, slug, stitch_shorthand(data_party, finetuned), data_party, selection)


def no_stitch(data_party: str, finetuned: bool = False) -> ModelId:
    """The no-stitch reference of a stitch-ensemble: its two parents fed c's preprocessing and
    averaged with no stitch (the paper's dashed line); shorthand ``a←[c]→b (no stitch)``."""
    slug = f"no_stitch_via_{data_party}" + ("_finetuned" if finetuned else "")
    return ModelId(Approach.STITCH, slug, f"{stitch_shorthand(data_party, finetuned)} (no stitch)", data_party)


def all_models() -> list[ModelId]:
    """Every model id of Table 2 (basis models, baselines, stitch-ensembles), for lookups by slug."""
    stitched = [stitch_ensemble(p, m, f, s) for p in PARTIES for m in STITCH_METHODS for f in (False, True)
                for s in SELECTION_STRATEGIES]
    return ([local(p) for p in PARTIES] + [finetuned(p) for p in PARTIES] + [ensemble()]
            + [ensemble_finetuned(p) for p in PARTIES] + [federated(), merged()]
            + stitched + [no_stitch(p, f) for p in PARTIES for f in (False, True)])


def lookup(approach: str, trained_on: str) -> ModelId | None:
    """The model id with these slugs, or ``None`` for a model this table does not know."""
    return next((m for m in all_models() if m.approach == approach and m.trained_on == trained_on), None)
