"""Stages 3-5: score candidates, refine the best one, pick chosen/rejected pairs."""
