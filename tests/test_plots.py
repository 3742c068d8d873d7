"""lib.core.plots' seaborn figures: they draw what they are given and save a PNG."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from lib.core import plots  # noqa: E402


def test_interval_points_one_panel_per_metric(tmp_path):
    rows = [{"model": m, "metric": k, "value": v, "lo": v - 0.1, "hi": v + 0.1}
            for m, a, kap in (("base", 0.3, 0.0), ("06", 0.6, 0.4)) for k, v in (("agreement", a), ("kappa", kap))]
    fig = plots.interval_points(rows, "agreement", tmp_path / "f.png", ref=0.0)
    assert [ax.get_title() for ax in fig.axes] == ["agreement", "kappa"]
    segs = fig.axes[1].collections[1].get_segments()      # the interval lines of kappa
    assert [tuple(s[:, 0]) for s in segs] == [(-0.1, 0.1), (0.30000000000000004, 0.5)]
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_layer_curves_one_line_per_model(tmp_path):
    rows = [{"model": m, "run": "toy", "layer": i, "value": v * i}
            for m, v in (("base", 0.1), ("03", 0.2)) for i in range(4)]
    fig = plots.layer_curves(rows, "P@1", "P@1", tmp_path / "l.png")
    lines = [l for l in fig.axes[0].get_lines() if len(l.get_xdata()) == 4]
    assert [list(l.get_ydata()) for l in lines] == [[0.0, 0.1, 0.2, 0.30000000000000004], [0.0, 0.2, 0.4, 0.6000000000000001]]
    assert (tmp_path / "l.png").exists()
