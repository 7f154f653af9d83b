"""The records a stage declaration is made of (:mod:`stitch_ops.stages.registry` holds the
declarations, :mod:`stitch_ops.stages.render` writes them as ``dvc.yaml``).

Values are ``dvc.yaml`` text: paths templated with DVC's ``${item.<axis>}``, axes given as a
``${params reference}`` or a YAML list. A stage's code deps are not declared: its command's
imports are recorded in ``code_digests/<stage>.json`` (:mod:`stitch_ops.stages.code_digests`), its one code dep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Flag = bool | str | Sequence[str]


@dataclass(frozen=True)
class Item:
    """One entry of ``dvc.yaml``: a path (dep, out, metric, plot), a params key or an axis's values,
    its options (``persist``, ``cache``, a plot's ``x``/``y``/``title``), and the comments that
    explain it: ``note`` after it on its line, ``above`` on the lines before it."""

    text: str
    flags: Mapping[str, Flag] = field(default_factory=dict)
    note: str = ""
    above: str = ""


def persisted(path: str, above: str = "") -> Item:
    """An output DVC keeps when its stage reruns (so that a killed run resumes)."""
    return Item(path, {"persist": True}, above=above)


def uncached(path: str, above: str = "") -> Item:
    """An output left in the workspace only (small files: metrics, curves, figures)."""
    return Item(path, {"cache": False}, above=above)


@dataclass(frozen=True)
class Stage:
    """One stage of ``dvc.yaml`` (a ``matrix``/``foreach`` of them when it has ``axes``).

    Attributes:
        name: the DVC stage name (expanded stages: ``name@<axis values joined by ->``).
        entry: the module ``python -m`` runs, with a subcommand where it has several
            (``stitch_ops.nnunet train``); its imports are the stage's code.
        args: the command's arguments, templated (``--pair ${item.pair}``).
        axes: axis name -> its values; a stage with only ``pair`` over every pair is written as
            ``foreach: ${pairs}`` (``${item}``), as DVC names both forms the same.
        deps: the data (and bundle definitions) it reads; its code record is added when written.
        params: the ``params.yaml`` keys it reads.
        outs, metrics, plots: what it writes, by how ``dvc`` shows it.
        comment: the lines above the stage that explain it.
    """

    name: str
    entry: str
    args: str
    axes: Mapping[str, Item] = field(default_factory=dict)
    deps: Sequence[Item] = ()
    params: Sequence[Item] = ()
    outs: Sequence[Item] = ()
    metrics: Sequence[Item] = ()
    plots: Sequence[Item] = ()
    comment: str = ""

    @property
    def cmd(self) -> str:
        return f"python -m {self.entry} {self.args}".rstrip()


@dataclass(frozen=True)
class StitchParents:
    """The two parents of the stitching stages, a variant of each: the two basis models
    (``a←[c]→b``) or c's basis model and the other party's model fine-tuned on c's data
    (``a←[a]→b→a``, issue 7), whose stages are the same but for what this holds."""

    suffix: str
    """Of the stage names and the stitch slugs: ``stitch_train_finetuned``, ``via_a_double_batched_finetuned``."""
    c_parties: str
    """The params list of the parties c whose images train the stitches."""
    model_deps: tuple[str, ...]
    """The models beyond the two basis models that the parents are made from."""
    flag: str
    """What the stage's command adds: ``--finetuned``."""

    def name(self, stage: str) -> str:
        return stage + self.suffix

    def args(self, args: str) -> str:
        return f"{args} {self.flag}".rstrip()
