"""Report code: out-of-fold cross-validation, grid-searched baselines, the e2e-CEL budget
study and small self-contained experiments. Not needed to train or run an ensemble
(``mmens.apis`` is inference, as in mmdet)."""
from .cel_digits import CelDigitsConfig, format_table, run_cel_digits

__all__ = ['CelDigitsConfig', 'run_cel_digits', 'format_table']
