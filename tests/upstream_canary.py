"""The upstream canary: on whichever transformers is installed, build the tiny model of every MoE architecture the
handlers know (tests/helpers/tiny_configs.py), count one forward with FlopCounterMode, and hold the analytic counts
against it, per MoE layer (eager and grouped_mm experts) and for the whole forward (eager attention). Prints one table
of what drifted from what the project claims, and exits 1 when anything did.

    python tests/upstream_canary.py            # the drifted architectures, then a one-line verdict
    python tests/upstream_canary.py --all      # every architecture

A drift is a count marked exact that differs from the measured one, a count marked not exact that now equals it (the
mark is stale), or a tiny model that no longer builds or runs. The test suite checks the same on the release in
constraints.txt; this command is for trying another release before changing the pin (docs/upstream.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers.tiny_configs
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run from a checkout

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from handlers import REGISTRY  # noqa: E402
from helpers.counting import count_forward  # noqa: E402
from helpers.tiny_configs import available_model_types, build_tiny_model, supports_experts_implementation  # noqa: E402

BATCH, SEQ = 2, 12
transformers.logging.set_verbosity_error()  # the tiny configs trip config warnings that say nothing here


def count(model_type: str, implementation: str):
    """The tiny model's forward counted both ways (eager attention; tests/helpers/counting.py)."""
    counted = count_forward(build_tiny_model(model_type, experts_implementation=implementation), "eager", BATCH, SEQ)
    if counted is None:
        counted = count_forward(build_tiny_model(model_type, experts_implementation=implementation), "sdpa", BATCH, SEQ)
    return counted


def verdict(marked_exact: bool, analytic, measured, stale_if_equal: bool) -> str:
    """A count marked exact must equal; one marked not exact must differ where the mark is about this count (the
    whole forward's marks are; a layer's may be about something else, e.g. jetmoe's attention experts)."""
    equal = analytic == measured
    if marked_exact:
        return "ok" if equal else f"DRIFT: analytic {_short(analytic)} != measured {_short(measured)}"
    if not equal:
        return "not exact (as marked)"
    return "DRIFT: marked not exact but now equal" if stale_if_equal else "equal here (marked not exact)"


def _short(value) -> str:
    return ",".join(f"{v:,.0f}" for v in value) if isinstance(value, list) else f"{value:,.0f}"


def check(model_type: str) -> dict:
    handler = REGISTRY.get(model_type)
    row = dict(model_type=model_type)
    implementations = ["eager"] + (["grouped_mm"] if supports_experts_implementation(model_type) else [])
    for implementation in ("eager", "grouped_mm"):
        if implementation not in implementations:
            row[f"layers {implementation}"] = "n/a (eager-only experts)"
            continue
        try:
            counted = count(model_type, implementation)
        except Exception as exc:  # a tiny model that no longer builds or runs is a drift too
            row[f"layers {implementation}"] = f"DRIFT: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
            continue
        if counted.analytic is None:  # no routing to count from (doge's product-key experts)
            row[f"layers {implementation}"] = "not modelled (as marked)" if not handler.exact else "DRIFT: no routed count"
            continue
        analytic = counted.layers["flops"].astype(int).tolist()
        measured = counted.layers["flops_measured"].astype(int).tolist()
        row[f"layers {implementation}"] = verdict(handler.exact, analytic, measured, stale_if_equal=False)
        if implementation == "eager":
            row["whole forward"] = verdict(counted.cost.exact, counted.analytic, counted.measured, stale_if_equal=True)
    row.setdefault("whole forward", "-")
    row["drifted"] = any(str(v).startswith("DRIFT") for v in row.values())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="print every architecture, not only the drifted ones")
    parser.add_argument("model_types", nargs="*", help="only these model types (default: every one installed)")
    args = parser.parse_args(argv)
    types = args.model_types or available_model_types()
    rows = pd.DataFrame([check(t) for t in types])
    shown = rows if args.all else rows[rows["drifted"]]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: {len(rows)} architectures, "
          f"{int(rows['drifted'].sum())} drifted")
    if len(shown):
        with pd.option_context("display.max_colwidth", 120, "display.width", 250):
            print(shown.drop(columns="drifted").to_string(index=False))
    return 1 if rows["drifted"].any() else 0


if __name__ == "__main__":
    sys.exit(main())
