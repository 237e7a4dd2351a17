"""The choices of the run settings that the CLI offers, in a module that imports nothing.

Why a module of its own: ``spr --help`` and every subcommand build the whole parser, and the modules
that *use* these choices import torch, transformers and scipy (seconds on a busy machine, for a command
like ``spr register`` that needs none of them).
"""

#: ``--label-match``: ``on`` = a box matches an object only if its phrase names the object's category.
LABEL_MATCH_MODES = ("on", "off")
DEFAULT_LABEL_THRESHOLD = 0.8
#: ``--refine-policy``: what refinement does to phrases that match no annotated object.
REFINE_POLICIES = ("off", "strip", "correct", "drop")
#: ``--score-norm``: per-region normalisation of S_sem and S_loc before mixing.
SCORE_NORMS = ("none", "zscore", "rank")
#: ``--box-format``: one per model-family profile (:mod:`spr_plugin.families.profiles`), the default first.
BOX_FORMATS = ("qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json")
DEFAULT_BOX_FORMAT = BOX_FORMATS[0]
