"""Small, self-contained experiments that check mmens components outside detection."""
from .cel_digits import CelDigitsConfig, format_table, run_cel_digits

__all__ = ['CelDigitsConfig', 'run_cel_digits', 'format_table']
