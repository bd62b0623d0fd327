"""Scoring completions, with nothing decoded: one completion's program in the sandbox
(``score``), stored completions scored again (``rescore``: ``backtrack rescore`` and
``report --rescore``) and ``backtrack check`` (``check``)."""
