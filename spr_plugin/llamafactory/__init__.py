"""The LLaMA-Factory contract: dataset record and entry, registration, media paths, pre-resize, training, web UI."""
