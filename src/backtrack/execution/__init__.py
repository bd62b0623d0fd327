"""Running untrusted code: the sandbox, model output turned into programs, and the visible
examples a prompt shows (what the ``examples`` operator and the sample filter check).

A leaf layer: it imports nothing else of the project, so the operators (which run a prompt's
examples while decoding) and the evaluation (which runs the hidden tests) share one sandbox.
"""
