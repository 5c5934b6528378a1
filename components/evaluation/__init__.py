"""Evaluation: SGG recall (R/mR/ng/hierarchy), LTVRR per-class band accuracy, saved predictions, plots."""
