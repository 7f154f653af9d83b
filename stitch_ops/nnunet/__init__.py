"""nnU-Net v2 used as a library: planning, preprocessing, training with a configurable
schedule, portable model export and sliding-window prediction.

nnU-Net reads its folders from environment variables; every entry point sets them with
:func:`stitch_ops.nnunet.env.configure`. ``nnunetv2`` is imported inside functions so
that ``import stitch_ops`` stays fast.
"""
