"""Evaluation of grounding models: REC accuracy (``spr eval rec``) and grounded-description
localization (``spr eval region``).

Each module has one job: :mod:`.metrics` holds the pure metric math, :mod:`.rec_data` reads
referring-expression files, :mod:`.model` loads a checkpoint (optionally with a LoRA adapter),
:mod:`.runner` does batched greedy decoding with a resumable per-item results file, and
:mod:`.rec` / :mod:`.region` put them together. :mod:`.report` prints and writes the results.
"""
