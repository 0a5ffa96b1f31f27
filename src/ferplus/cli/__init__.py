"""The command lines of the toolkit, one module each: ``get_args_parser()``, ``main(args)`` and ``run()``.

``run`` is what the console entry points (``ferplus-train`` …) and the top-level scripts
(``train.py`` …) call.
"""
