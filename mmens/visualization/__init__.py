from .draw import draw_examples
from .plots import (plot_ap_bars, plot_budget_curve, plot_pr_curves, plot_selection_frequency,
                    plot_theta)

__all__ = ['draw_examples', 'plot_ap_bars', 'plot_budget_curve', 'plot_pr_curves',
           'plot_selection_frequency', 'plot_theta']
