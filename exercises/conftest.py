"""The course board after every ``pytest exercises`` run (see ``scripts/course_board.py``).

Not generated: ``scripts/make_exercises.py`` never writes or deletes ``conftest.py``.
"""

from scripts.course_board import pytest_configure, pytest_runtest_makereport  # noqa: F401
