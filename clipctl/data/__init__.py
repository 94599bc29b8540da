"""Datasets: one record per dataset (`records`, registered by each family module: `shapes`, `coco`, `imagenet`,
`cc3m`; looked up through `registry`), the fetch/verify operations (`operations`) and downloads (`fetch`), readers
by layout (`layouts` and its reader modules, opened through `datasets`), transforms, text and loaders.

Submodules are imported on use (`from clipctl.data.registry import resolve`) so that the CLI and the DataLoader
workers do not pay for torch, the dataset families or the hub client unless they need them.
"""
