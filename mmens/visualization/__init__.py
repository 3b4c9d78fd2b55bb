from .plots import plot_ap_bars, plot_budget_curve, plot_selection_frequency, plot_theta

__all__ = ['plot_ap_bars', 'plot_budget_curve', 'plot_selection_frequency', 'plot_theta']
