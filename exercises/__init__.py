"""The course's components: one module or package per component, named as in specs/.

In ``solutions/`` these are the worked solutions; ``exercises/`` holds the stubs generated from
them by ``scripts/make_exercises.py``.
"""
