"""The code the stages share, split by concern and by who uses it. A stage lists in
dvc.yaml's deps the modules it imports (python tools/stage_deps.py), so an edit here
reruns the stages that import the module and no others (docs/pipeline.md#what-an-edit-reruns)."""
