"""Orchestration: the runner (notebooks in order, resumable), the checks before any work, the
memory and time plan, grids (and their Slurm scripts), failure messages, the run report, the
Colab notebooks and the rehearsal's stand-in models. May import every package but cli."""
