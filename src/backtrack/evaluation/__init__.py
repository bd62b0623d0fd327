"""Evaluation, by job: :mod:`~backtrack.evaluation.generation` produces completions (the plan,
the decoding sources, the sample filter, the Ray pool), :mod:`~backtrack.evaluation.scoring`
runs them against the problems' tests (one program, ``rescore``, ``check``) and
:mod:`~backtrack.evaluation.reporting` turns result directories into tables (metrics,
report).

The modules at this level are what the jobs share: the problems (``data``, with the EvalPlus
tests a HumanEval+/MBPP+ problem carries, ``evalplus_check``, and the reference times that
set their limits, ``reference_times``), ``prompts`` (prompt and program text), ``settings``
(a run's settings), ``cells`` (what one completion is) and ``store`` (a result directory).
They import no job; scoring and reporting import only them, so re-scoring or reporting
never loads the decoding side (``tests/test_structure.py`` checks it); generation scores
what it decodes, through scoring.
"""
