"""Training curves: train and validation bits per byte against steps and wall-clock."""
import json
import sys


def plot_metrics(metrics_path, plot_path):
    """Train and val bpb against steps and wall-clock; skipped with a warning without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib is not installed; no plot written", file=sys.stderr)
        return None
    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, xkey, xlabel in ((axes[0], "step", "step"), (axes[1], "time_s", "wall-clock (s)")):
        for key, label in (("train_bpb", "train"), ("val_bpb", "val")):
            pts = [(r[xkey], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=label, marker="o" if key == "val_bpb" else ".")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path, dpi=100)
    plt.close(fig)
    return plot_path
