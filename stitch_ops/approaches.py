"""The one table of the paper's approaches (Table 2): every slug, shorthand, tag and CLI
choice of the package is derived from here, so a new kind of model is added in one place.

Words, used the same everywhere (code, ``params.yaml``, CLI flags, MLflow tags, docs):

- *approach*: how a model is made (``finetune``, ``stitch``...), the first folder level of
  ``models|predictions|metrics/{pair}/{approach}/{trained_on}/fold_k`` and the MLflow tag
  ``approach``; *trained-on*: the second folder level and the tag ``trained_on``;
- *perspective*: the party whose data the approach used, from whose point of view it is
  feasible (``both`` when it needs no party's data or both parties' data);
- ``test_party``: the party whose test set is scored (a column of ``cases.csv``);
- ``c``: the party whose unlabeled images train the stitches of ``a←[c]→b``.

==========================  ======================  =====================  ===========  =====================
approach                    trained-on slug         shorthand              perspective  data used
==========================  ======================  =====================  ===========  =====================
``local``                   ``a``, ``b``            ``a``, ``b``           a, b         own
``finetune``                ``a_to_b``, ``b_to_a``  ``a→b``, ``b→a``       b, a         other's model, own data
``ensemble``                ``a_and_b``             ``a&b``                both         models only
``ensemble_finetuned``      ``a_and_b_to_{p}``      ``a&b→{p}``            p            own data
``federated``               ``a_fed_b``             ``a‖b``                both         both, never pooled
``merged``                  ``a_plus_b``            ``a+b``                both         both, pooled
``stitch``                  ``via_{c}_{method}``    ``a←[c]→b``            c            c only (no labels)
``stitch``                  ``via_{c}_{method}_finetuned``  ``a←[a]→b→a``  c            c only
``stitch``                  ``no_stitch_via_{c}[_finetuned]``  ``… (no stitch)``  c   c's preprocessing
==========================  ======================  =====================  ===========  =====================

``a←[a]→b→a`` (``b←[b]→a→b``): c's basis model stitched to the other party's model fine-tuned
on c's data, stitches trained on c's data. A stitch-ensemble chosen by selection strategy 2 or 3
has the slug ``{slug}_all_folds`` / ``{slug}_rule_of_thumb`` (MLflow tag ``selection``);
strategy 1 (``current_fold``) keeps the plain slug. ``no_stitch_via_{c}[_finetuned]``: the
stitch-ensemble's two parents fed c's preprocessing and averaged with no stitch (the paper's
dashed line).

This module imports nothing heavy (no torch): every command line can use it.
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


class StitchMethod(StrEnum):
    """How stitches are trained (DESIGN.md, step 4): the ``{method}`` of ``via_{c}_{method}``."""

    DOUBLE_BATCHED = "double_batched"  # the default
    DIRECT_MATCHING = "direct_matching"

    @property
    def label(self) -> str:
        """The paper's words, for tables and legends: "direct matching", "double-batched"."""
        return {StitchMethod.DOUBLE_BATCHED: "double-batched", StitchMethod.DIRECT_MATCHING: "direct matching"}[self]


def other(party: str) -> str:
    """The other party of the pair (``a`` ↔ ``b``)."""
    if party not in PARTIES:
        raise ValueError(f"party must be one of {PARTIES}, got {party!r}")
    return PARTIES[1 - PARTIES.index(party)]


@dataclass(frozen=True)
class ModelId:
    """One model of one approach: its slugs, its shorthand and what it was made from.

    Attributes:
        perspective: the party whose data the approach used (``both``: none or both).
        data_used: the paper's "data used" column, in words.
        models_used: the parties whose trained basis models it starts from or combines.
        online: whether the parties must be online together while it is trained.
    """

    approach: Approach
    trained_on: str
    shorthand: str
    perspective: str
    data_used: str
    models_used: tuple[str, ...] = ()
    online: bool = False
    selection: str | None = None  # stitch-ensembles: the selection strategy that chose k

    def tags(self) -> dict[str, str]:
        """The MLflow tags this model adds to the evaluation run."""
        tags = {"perspective": self.perspective, "shorthand": self.shorthand}
        return tags if self.selection is None else {**tags, "selection": self.selection}


def local(party: str) -> ModelId:
    """``a``: the basis model trained on ``party``'s own data."""
    return ModelId(Approach.LOCAL, party, party, party, f"{party} only")


def finetuned(party: str) -> ModelId:
    """``other→party``: the other party's basis model fine-tuned on ``party``'s data."""
    source = other(party)
    return ModelId(Approach.FINETUNE, f"{source}_to_{party}", f"{source}→{party}", party,
                   f"{source}'s model, then {party}", (source,))


FINETUNE_SLUGS = tuple(sorted(finetuned(p).trained_on for p in PARTIES))
"""``a_to_b``, ``b_to_a``: the fine-tuning directions (CLI ``--trained-on``, ``sweep.routes``)."""


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
    return ModelId(Approach.ENSEMBLE, "a_and_b", "a&b", BOTH, "models only", PARTIES)


def ensemble_finetuned(party: str) -> ModelId:
    """``a&b→party``: own basis model averaged with the other's model fine-tuned on own data."""
    return ModelId(Approach.ENSEMBLE_FINETUNED, f"a_and_b_to_{party}", f"a&b→{party}", party,
                   f"{party} only", PARTIES)


def federated() -> ModelId:
    """``a‖b``: FedAvg of both parties' training, data never pooled."""
    return ModelId(Approach.FEDERATED, "a_fed_b", "a‖b", BOTH, "both, never pooled", online=True)


def merged() -> ModelId:
    """``a+b``: one model on the pooled data (needs data sharing: the upper bound)."""
    return ModelId(Approach.MERGED, "a_plus_b", "a+b", BOTH, "both, pooled")


SELECTION_STRATEGIES = ("current_fold", "all_folds", "rule_of_thumb")
"""Selection strategies 1, 2, 3 (DESIGN.md, "Selecting k"); the first keeps the plain slug."""


def stitch_slug(c: str, method: StitchMethod | str, finetuned: bool = False) -> str:
    """Folder slug of a stitch network: ``via_a_double_batched``, ``via_a_double_batched_finetuned``."""
    return f"via_{c}_{StitchMethod(method).value}" + ("_finetuned" if finetuned else "")


def stitch_shorthand(c: str, finetuned: bool = False) -> str:
    """``a←[c]→b``, or ``a←[a]→b→a`` / ``b←[b]→a→b`` when the other parent is fine-tuned on c's data."""
    return f"{c}←[{c}]→{other(c)}→{c}" if finetuned else f"a←[{c}]→b"


def stitch_ensemble(c: str, method: StitchMethod | str, finetuned: bool = False,
                    selection: str = SELECTION_STRATEGIES[0]) -> ModelId:
    """A stitch-ensemble at the position k that ``selection`` chose on c's validation cases.

    ``a←[c]→b`` (``finetuned=False``): the basis models stitched, stitches trained on c's
    unlabeled images. ``a←[a]→b→a`` (``finetuned=True``): c's basis model and the other
    party's model fine-tuned on c's data (:func:`finetuned`), stitches on c's data.
    """
    if c not in PARTIES:
        raise ValueError(f"c (whose images train the stitches) must be one of {PARTIES}, got {c!r}")
    if selection not in SELECTION_STRATEGIES:
        raise ValueError(f"selection must be one of {SELECTION_STRATEGIES}, got {selection!r}")
    slug = stitch_slug(c, method, finetuned)
    if selection != SELECTION_STRATEGIES[0]:
        slug = f"{slug}_{selection}"
    if finetuned:
        return ModelId(Approach.STITCH, slug, stitch_shorthand(c, True), c, f"{c} only",
                       PARTIES, selection=selection)
    return ModelId(Approach.STITCH, slug, stitch_shorthand(c), c, f"{c} only, no labels", PARTIES,
                   selection=selection)


def no_stitch(c: str, finetuned: bool = False) -> ModelId:
    """The no-stitch reference of the stitch-ensembles trained on c's data: their two parents fed
    c's preprocessing and averaged with no stitch (the paper's dashed line)."""
    if c not in PARTIES:
        raise ValueError(f"c (whose images train the stitches) must be one of {PARTIES}, got {c!r}")
    slug = f"no_stitch_via_{c}" + ("_finetuned" if finetuned else "")
    return ModelId(Approach.STITCH, slug, f"{stitch_shorthand(c, finetuned)} (no stitch)", c,
                   f"{c}'s preprocessing only" if not finetuned else f"{c} only", PARTIES)


def all_models() -> list[ModelId]:
    """Every model id of Table 2 (basis models, baselines, stitch-ensembles), for lookups by slug."""
    stitched = [stitch_ensemble(c, m, f, s) for c in PARTIES for m in StitchMethod for f in (False, True)
                for s in SELECTION_STRATEGIES]
    return ([local(p) for p in PARTIES] + [finetuned(p) for p in PARTIES] + [ensemble()]
            + [ensemble_finetuned(p) for p in PARTIES] + [federated(), merged()]
            + stitched + [no_stitch(c, f) for c in PARTIES for f in (False, True)])


def lookup(approach: str, trained_on: str) -> ModelId | None:
    """The model id with these slugs, or ``None`` for a model this table does not know."""
    return next((m for m in all_models() if m.approach == approach and m.trained_on == trained_on), None)


def validation_party(approach: str, trained_on: str) -> str | None:
    """Whose validation cases a model's ``val`` predictions are: its perspective's (a basis
    model's own party's); ``None`` for a model of both parties or one this table does not know."""
    model = lookup(approach, trained_on)
    return model.perspective if model is not None and model.perspective in PARTIES else None

