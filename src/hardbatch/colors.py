"""One colour per batching strategy, the same in every plot hardbatch draws (demo, experiment, inspect).

The palette is Okabe–Ito (distinguishable with the common colour-vision deficiencies). Random batches are
grey everywhere, since they are the reference every other strategy is compared with; the frozen model
(no training) is black. A name outside the palette (a plan file, a new sampler) gets a stable colour from
the rest of the palette, derived from its name, so it too keeps its colour from one plot to the next.
"""

from __future__ import annotations

import zlib

__all__ = ["STRATEGY_COLORS", "legend_outside", "strategy_color"]

STRATEGY_COLORS: dict[str, str] = {
    "frozen": "#000000",
    "random": "#8C8C8C",
    "b3": "#D55E00",  # vermillion
    "gcbs": "#0072B2",  # blue
    "topic": "#009E73",  # bluish green
    "source": "#CC79A7",  # reddish purple
    "nodup": "#E69F00",  # orange
}
_EXTRA = ("#56B4E9", "#F0E442", "#882255", "#44AA99", "#999933", "#332288")


def strategy_color(name: str) -> str:
    """The colour of strategy ``name`` (``"b3"``, ``"random"``, ``"plan:my-plan"``, ...).

    Example:
        >>> strategy_color("b3"), strategy_color("random")
        ('#D55E00', '#8C8C8C')
        >>> strategy_color("plan:x") == strategy_color("plan:x")
        True
    """
    key = str(name).lower()
    if key in STRATEGY_COLORS:
        return STRATEGY_COLORS[key]
    return _EXTRA[zlib.crc32(key.encode("utf-8")) % len(_EXTRA)]


def legend_outside(ax, **kwargs) -> None:
    """Put ``ax``'s legend to the right of the plot area, so it never covers bars or lines.

    Draw the figure with ``layout="constrained"``, which reserves the legend's room.
    """
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              **{"fontsize": 8, "frameon": False, **kwargs})  # fmt: skip
