"""stitch_ops: stitch disjointly trained nnU-Net models into ensembles."""
__version__ = "0.1.0"
