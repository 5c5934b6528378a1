"""Ray Tune sweeps: Optuna search + ASHA stopping, resumable, with every trial an MLflow run."""
