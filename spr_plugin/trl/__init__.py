"""TRL adapters: DPO collation, GRPO export and reward."""
