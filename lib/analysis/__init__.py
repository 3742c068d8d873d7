"""Stage 08: agreement, Cohen's kappa and their intervals, the paired summary tables, transfer
ratios, extra-task deltas and the representation figures. May import: eval, modeling, core."""
