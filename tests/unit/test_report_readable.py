"""What a reader of the report can rely on: the random-weights warning and the weights row of the provenance, the KL
panel's reference point (the own routing at its own k, KL 0) and readable tick labels, one legend order whatever the
row order, and per-layer figures that still read as layers for a 1-2 layer model."""
from __future__ import annotations

import math

import pandas as pd

from runner.report import analysis_figures as analyses, page, quality, routing_figures as routing
from runner.report.figures import DPI, save, series_labels
from runner.profiler.selector_registry import OWN_ROUTING as OWN


def _runs(order=None, weights="random"):
    """A 5-job sweep of one model: own routing at k = 1, 2 (its own), 4 and kneedle at k_max 2, 4; KL within one
    decade, as on a tiny model."""
    jobs = [(OWN, 1, 26624.0, 5.58648, 2.1e-6), (OWN, 2, 51200.0, 5.58659, None), (OWN, 4, 100352.0, 5.58661, 4.2e-6),
            ("kneedle", 2, 48120.0, 5.58662, 3.4e-7), ("kneedle", 4, 90112.0, 5.58660, 1.3e-6)]
    rows = [dict(run_id=f"r{n}", job_num=n, model="olmoe_tiny", selector=s, selector_params="{}", topk=k,
                 default_topk=2, flops_per_token_routed=f, loss=loss, kl=kl, status="ok", weights=weights,
                 tokens_per_s=1000.0 * (n + 1)) for n, (s, k, f, loss, kl) in enumerate(jobs)]
    runs = pd.DataFrame([rows[i] for i in (order or range(len(rows)))])
    runs["kl"] = runs["kl"].astype(float)
    return runs.assign(series=series_labels(runs))


def _legend(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_the_kl_panel_draws_the_reference_at_zero_with_readable_ticks():
    fig = quality.frontier(_runs())
    kl_ax = fig.axes[1]
    own = next(line for line in kl_ax.get_lines() if line.get_label() == OWN)
    assert list(own.get_xdata()) == [26624.0, 51200.0, 100352.0]  # the line passes through k=2, not over it
    assert list(own.get_ydata()) == [2.1e-6, 0.0, 4.2e-6]
    labels = [t.get_text() for t in kl_ax.get_yticklabels()
              if t.get_text() and kl_ax.get_ylim()[0] <= t.get_position()[1] <= kl_ax.get_ylim()[1]]
    assert labels[0] == "0" and len(labels) >= 4, labels  # 0, 1e-07, 2e-07, 5e-07, 1e-06, ...
    assert "1e-06" in labels and "1e-05" in labels


def test_a_sweep_without_kl_has_no_reference_invented():
    runs = _runs().assign(kl=float("nan"))
    fig = quality.frontier(runs)
    assert len(fig.axes) == 1  # no KL panel: nothing to compare with


def test_legend_order_does_not_follow_the_row_order():
    first = quality.frontier(_runs())
    second = quality.frontier(_runs(order=[4, 3, 2, 1, 0]))
    assert _legend(first.axes[0]) == _legend(second.axes[0]) == [OWN, "kneedle", "Pareto-optimal"]
    speed = quality.speed(_runs(order=[3, 0, 1, 2, 4]))
    assert _legend(speed.axes[0]) == [OWN, "kneedle"]


def _two_layers(series=("kneedle", OWN)):
    rows = [dict(layer=layer, series=label, jaccard_next=0.4 if layer == 0 else None, router_entropy=0.9,
                 load_cv=0.3, dead_experts=0) for label in series for layer in (0, 1)]
    return pd.DataFrame(rows)


def test_figures_of_a_two_layer_model_read_as_layers():
    jaccard = analyses.jaccard(_two_layers())
    (ax,) = jaccard.axes
    assert ax.get_xlim() == (-0.5, 0.5) and [t.get_text() for t in ax.get_xticklabels()] == ["0"]
    assert ax.get_ylim() == (-0.03, 1.03)  # a share, on its whole range
    assert _legend(ax) == [f"{OWN}: mean 0.400", "kneedle: mean 0.400"]
    metrics = routing.layer_metrics(_two_layers(series=("kneedle",)), 2)  # one selector, no own routing
    for axis in metrics.axes:
        assert axis.get_xlim() == (-0.5, 1.5) and [t.get_text() for t in axis.get_xticklabels()] == ["0", "1"]


def test_one_job_still_draws(tmp_path):
    one = _runs().iloc[[1]]
    fig = quality.frontier(one)
    assert len(fig.axes) == 1 and quality.speed(one) is not None
    assert _legend(fig.axes[0]) == [OWN]  # one point is not "Pareto-optimal" against anything
    path = save(fig, tmp_path / "one.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] == round(fig.get_figwidth() * DPI) and DPI >= 110  # legible at the page's width


def test_random_weights_are_said_above_everything_and_in_the_provenance():
    html = page.render("sweep s1", _runs(), [])
    warning = html.index('id="random-weights"')
    assert warning < html.index("<nav>") and "every job (olmoe_tiny) ran on seeded random weights" in html
    assert '<tr class="warning"><th>weights</th><td>random</td></tr>' in html
    mixed = pd.concat([_runs(), _runs(weights="pretrained").assign(model="olmoe")], ignore_index=True)
    assert "5 of 10 jobs (olmoe_tiny) ran on seeded random weights" in page.render("sweep s2", mixed, [])
    trained = page.render("sweep s3", _runs(weights="pretrained"), [])
    assert 'id="random-weights"' not in trained and "<th>weights</th><td>pretrained</td>" in trained
    assert not math.isnan(_runs()["loss"].sum())
