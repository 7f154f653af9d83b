"""The pipeline's stages: one entry module per stage whose command is not another package's
``__main__`` (``python -m stitch_ops.stages.<stage>``), and the registry that renders ``dvc.yaml``
(:mod:`stitch_ops.stages.registry`, :mod:`stitch_ops.stages.render`).

Kept empty: every entry module imports this package, so what is here is a code dependency of
those stages, and an edit here would rerun them.
"""
