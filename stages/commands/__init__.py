"""The commands a user runs (console scripts in pyproject.toml): classify-images,
check-thresholds, check-reproduction, check-dvc-remote and run-pipeline. No stage
imports them."""
