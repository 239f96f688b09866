"""The selection methods, one module each (less, rds, s2l, random, bm25, dsir, full).

Each module defines a :class:`~lightning_less.selection.registry.SelectionMethod`
subclass decorated with :func:`~lightning_less.selection.registry.register`, and the
pure selector it calls (``select_less``, ``select_rds``, ...: inputs in, a
:class:`~lightning_less.selection.result.SelectionResult` out). The registry imports
every module of this package, so a new method is one new file here.
"""
