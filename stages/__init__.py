"""DVC pipeline stages for the three image-analysis exercises.

Each module is one stage: pure functions that do the work, and a ``main()`` that
reads params.yaml, loads inputs, calls them and writes outputs.
"""

import os

# TensorFlow's C++ chatter would bury the stages' own progress lines; errors still
# show. A user's own setting wins, and then stages.common does not filter stderr either.
TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
