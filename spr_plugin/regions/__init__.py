"""Stage 1: query regions sampled from COCO-format annotations."""
