"""Model-family profiles: box syntax and frame, prompts, the REC prompt, the LLaMA-Factory template, special tokens."""
