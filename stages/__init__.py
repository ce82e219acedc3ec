"""DVC pipeline stages for the three image-analysis exercises.

Each module is one stage: pure functions that do the work, and a ``main()`` that
reads params.yaml, loads inputs, calls them and writes outputs.
"""

import os

# TensorFlow's C++ start-up chatter (CPU instruction sets, missing CUDA) would bury
# the stages' own progress lines; errors still show. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
