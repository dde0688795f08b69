"""The report's plots: the dataset's figure and the metrics' figure (matplotlib's object API, no
pyplot state). Legends sit above their axes, beside the title, so none covers a bar."""
from __future__ import annotations

import io

PLOTTED_COMPOSITIONS = 40  # a bar per composition stops being readable beyond this
SET_TITLES = {"mycanvas": "MyCanvas", "generated": "Generated images"}


def metric_value(summary: dict, key):
    """A summary's value; ``key`` is a field or a (field, subfield) pair such as ("ti_clip", "train")."""
    if isinstance(key, tuple):
        return summary[key[0]][key[1]]
    return summary[key]


def render(figure) -> bytes:
    buffer = io.BytesIO()
    # Fixed metadata keeps the bytes identical between runs.
    figure.savefig(buffer, format="png", metadata={"Software": None}, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _legend_above(axes, entries: int) -> None:
    """The legend in one row above the plot's right end (titles go on the left): it never covers a bar."""
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=entries, fontsize=7, frameon=False,
                borderaxespad=0.2, handlelength=1.2, columnspacing=0.8)


def dataset_figure(stats: dict, accepted: list[dict]):
    """The dataset plots: images per composition (accepted and rejected), concepts per image,
    object scale and caption length."""
    # The object API without pyplot: no global state, and cheaper to import and render.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7.4), dpi=80)
    axes = figure.subplots(2, 2)
    per_comp = stats["images_per_composition"]
    names = list(per_comp)[:PLOTTED_COMPOSITIONS]
    axes[0, 0].barh(names, [per_comp[n]["accepted"] for n in names], label="accepted", color="tab:green")
    axes[0, 0].barh(names, [per_comp[n]["rejected"] for n in names], left=[per_comp[n]["accepted"] for n in names],
                    label="rejected", color="tab:red")
    axes[0, 0].set_title("images per composition" + (f" (first {len(names)} of {len(per_comp)})"
                                                       if len(names) < len(per_comp) else ""), loc="left", fontsize=10)
    _legend_above(axes[0, 0], 2)
    axes[0, 0].tick_params(axis="y", labelsize=6)
    axes[0, 0].invert_yaxis()  # the first composition at the top, as in the table
    cpi = stats["concepts_per_image"]
    axes[0, 1].bar([str(k) for k in cpi], list(cpi.values()), color="tab:blue")
    axes[0, 1].set_title("concepts per image", fontsize=10)
    scales = [c["checks"]["area_fraction"] for row in accepted for c in row["concepts"]]
    axes[1, 0].hist(scales, bins=10, color="tab:purple")
    axes[1, 0].set_title("object scale (visible area / canvas)", fontsize=10)
    words = [len(row["captions"]["detailed"].split()) for row in accepted]
    axes[1, 1].hist(words, bins=10, color="tab:orange")
    axes[1, 1].set_title("caption length (words)", fontsize=10)
    # Fixed margins: tight_layout measures every label and costs as much as the drawing.
    figure.subplots_adjust(left=0.24, right=0.98, top=0.93, bottom=0.07, hspace=0.4, wspace=0.25)
    return figure


def metrics_figure(evaluation: dict):
    """Per metric set: the metrics by number of concepts per image, and CP-CLIP (or TI-CLIP) by composition."""
    from matplotlib.figure import Figure

    sets = list(evaluation["sets"].items())
    figure = Figure(figsize=(12, 3.8 * len(sets)), dpi=80)
    axes = figure.subplots(len(sets), 2, squeeze=False)
    measures = [("CP-CLIP", "cp_clip"), ("detection rate", "detection_rate"), ("personalisation", "personalisation"),
                ("TI-CLIP train", ("ti_clip", "train")), ("CLIP-I", "clip_i")]
    for row, (name, result) in enumerate(sets):
        title = SET_TITLES.get(name, name)
        groups = result["breakdowns"]["by_concept_count"]
        labels = list(groups)
        width = 0.8 / len(measures)
        ax = axes[row, 0]
        for m, (label, key) in enumerate(measures):
            values = [metric_value(groups[g], key) for g in labels]
            ax.bar([i + m * width for i in range(len(labels))], [v if v is not None else 0.0 for v in values],
                   width, label=label)
        ax.set_xticks([i + width * (len(measures) - 1) / 2 for i in range(len(labels))], [f"{g} concepts" for g in labels])
        # The title above the legend's row: both sit over the plot, neither covers a bar.
        ax.set_title(f"{title}: by number of concepts per image", loc="left", fontsize=10, pad=18)
        _legend_above(ax, len(measures))
        comps = result["breakdowns"]["by_composition"]
        names = list(comps)
        key = "cp_clip" if result["summary"]["cp_clip"] is not None else ("ti_clip", "train")
        label = "CP-CLIP" if key == "cp_clip" else "TI-CLIP (train)"
        axes[row, 1].barh(names, [(metric_value(comps[n], key) or 0.0) for n in names], color="tab:purple")
        axes[row, 1].set_title(f"{title}: {label} by composition", loc="left", fontsize=10, pad=18)
        axes[row, 1].tick_params(axis="y", labelsize=6)
        axes[row, 1].invert_yaxis()
    figure.tight_layout()
    return figure
