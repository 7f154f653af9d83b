"""MONAI bundles: the workflows their configs call, exporting trained bundles, and
verifying a bundle received from another party before anything in it is used."""
