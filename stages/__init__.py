"""DVC pipeline stages for the three image-analysis exercises.

Each module is one stage: functions that do the work, and a ``main()`` that
reads params.yaml, loads inputs, calls them and writes outputs.
"""

import os

# TensorFlow's C++ chatter would bury the stages' own progress lines; errors still
# show. A user's own setting wins, and then stages.common does not filter stderr either.
# The default is marked, so that a process started by one that imported `stages` (dvc
# run from the tests, say) does not take it for the user's.
_DEFAULT_MARK = "STAGES_DEFAULT_TF_CPP_MIN_LOG_LEVEL"
TF_LOG_LEVEL_FROM_USER = os.environ.get("TF_CPP_MIN_LOG_LEVEL") not in (None, os.environ.get(_DEFAULT_MARK))
if not TF_LOG_LEVEL_FROM_USER:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[_DEFAULT_MARK] = "2"
