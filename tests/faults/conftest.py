"""The fault-injection suite runs on demand (``tox -e faults``, or ``LLMFS_FAULTS=1 pytest
tests/faults``), not in the default test run: it kills and restarts training processes many
times (minutes on two cores)."""

import os

if not os.environ.get("LLMFS_FAULTS"):
    collect_ignore_glob = ["test_*.py"]
