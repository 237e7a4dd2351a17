"""The bottom layer: records passed between stages, errors, choice lists, JSONL/atomic I/O, paths, images.

Nothing here imports another spr_plugin package."""
