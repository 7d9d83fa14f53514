"""Instruction tuning: templates, dataset recipes, mixture sampling, collator and Trainer."""
