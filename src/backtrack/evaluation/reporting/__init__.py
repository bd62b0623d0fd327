"""Reporting result directories: pass@k, costs and paired comparisons (``metrics``) and the
tables and plots of ``backtrack report`` (``report``)."""
