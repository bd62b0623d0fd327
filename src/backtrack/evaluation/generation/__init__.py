"""Producing completions: the run's plan and resumption (``runner``), the decoding sources
(``sources``), the sample filter and its beam variant (``filtering``) and the Ray pool
(``distributed``)."""
