"""DVC pipeline stages for the three image-analysis exercises.

Each stage is one module (``python -m stages.<stage>`` in dvc.yaml): functions that do
the work, and a ``main()`` that reads params.yaml, loads inputs, calls them and writes
outputs. The other modules hold what several stages share, one concern each, so that
dvc.yaml can list under each stage's ``deps`` exactly the modules it runs
(tests/test_stage_deps.py checks it).
"""

import os

# TensorFlow's C++ chatter would bury the stages' own progress lines; errors still
# show. A user's own setting wins, and then stages.shared.runtime does not filter stderr either.
# The default is marked, so that a process started by one that imported `stages` (dvc
# run from the tests, say) does not take it for the user's. It is set here, on the
# package, because importing any stage runs this first, before the stage imports TensorFlow.
_DEFAULT_MARK = "STAGES_DEFAULT_TF_CPP_MIN_LOG_LEVEL"
TF_LOG_LEVEL_FROM_USER = os.environ.get("TF_CPP_MIN_LOG_LEVEL") not in (None, os.environ.get(_DEFAULT_MARK))
if not TF_LOG_LEVEL_FROM_USER:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[_DEFAULT_MARK] = "2"
