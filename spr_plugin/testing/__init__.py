"""Test scaffolding: tiny checkpoints for tests, benches and the demo. Never imported by a stage."""
