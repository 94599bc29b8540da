"""Datasets: the registry and downloader, the `shapes` generator, dataset readers, transforms, text, loaders.

Submodules are imported on use (`from clipctl.data.shapes import ensure_shapes`) so that the CLI and the
DataLoader workers do not pay for torch or the hub client unless they need them.
"""
