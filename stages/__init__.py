"""DVC pipeline stages for the three image-analysis exercises: a module a stage, each run
as ``python -m stages.<stage>``; the commands a user runs in ``stages.commands``; what
they share in ``stages.shared`` (docs/pipeline.md says which stage imports what)."""

import os

# TensorFlow's C++ chatter would bury the stages' own progress lines; errors still show.
# Set here, on the package, since importing any stage runs this before TensorFlow starts.
# A user's own setting wins, and stages.shared.tensorflow_runtime then filters nothing. The
# default is marked, so that a process started by one that imported `stages` (dvc run
# from the tests, say) does not take it for the user's.
_DEFAULT_MARK = "STAGES_DEFAULT_TF_CPP_MIN_LOG_LEVEL"
TF_LOG_LEVEL_FROM_USER = os.environ.get("TF_CPP_MIN_LOG_LEVEL") not in (None, os.environ.get(_DEFAULT_MARK))
if not TF_LOG_LEVEL_FROM_USER:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[_DEFAULT_MARK] = "2"
