"""Stage 2: candidate descriptions, sampled by transformers or an OpenAI-compatible server."""
