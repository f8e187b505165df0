"""The benchmark report: Markdown and HTML tables in the papers' layout, the multi-objective table,
the Pareto front, the scoring function F, fairness across clients, the LLM side, and PNG plots
(privacy–utility, communication per round, utility vs data size).

An objective a setting does not measure prints as "unknown"; any other missing measurement as "–".
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlsm.bench.aggregate import OBJECTIVES, Group, RunRecord, Stat, aggregate, baseline_table, collect, to_json
from fedlsm.bench.score import DEFAULT_WEIGHTS, scores
from fedlsm.eval.stats import fmt_interval

DASH = "–"
UNKNOWN = "unknown"  # an objective not measured: never free, never filled in


def fmt_pct(s: Stat | float | None) -> str:
    if s is None:
        return DASH
    if isinstance(s, Stat):
        return f"{100 * s.mean:.1f}" + (f" ± {100 * s.std:.1f}" if s.n > 1 else "")
    return f"{100 * s:.1f}"


def fmt_pct_ci(s: Stat | None) -> str:
    """``mean ± std [95% t-interval]`` over seeds (the interval only from two seeds on)."""
    if s is None or s.ci is None:
        return fmt_pct(s)
    return f"{fmt_pct(s)} [{100 * s.ci[0]:.1f}, {100 * s.ci[1]:.1f}]"


def fmt_eps(x: float | None) -> str:
    if x is None:
        return DASH
    return "∞" if math.isinf(x) else f"{x:g}"


def fmt_bytes(x: float | None) -> str:
    if x is None:
        return DASH
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f} {unit}"
    return f"{x:.0f} B"


def fmt_num(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x:,.{digits}f}"


def _mean(g: Group, k: str) -> float | None:
    return g.mean(k)


def _objective(g: Group, key: str, fmt: Callable[[Any], str], pct: bool = False) -> str:
    """An objective's cell: ``unknown`` where the setting does not measure it."""
    st = g.stats.get(key)
    if st is None:
        return UNKNOWN
    return fmt(st) if pct else fmt(st.mean)


def fmt_membership(g: Group) -> str:
    """The worst audit's AUC: one seed with its bootstrap 95% interval over examples, several as
    mean ± std [95% t-interval] over seeds."""
    s = g.stats.get("membership_auc")
    if s is None:
        return UNKNOWN
    if s.n > 1:
        ci = "" if s.ci is None else f" [{max(0.0, s.ci[0]):.2f}, {min(1.0, s.ci[1]):.2f}]"  # an AUC is in [0, 1]
        return f"{s.mean:.2f} ± {s.std:.2f}{ci}"
    lo, hi = g.mean("membership_auc_low"), g.mean("membership_auc_high")
    return f"{s.mean:.2f}" + ("" if lo is None or hi is None else f" [{lo:.2f}, {hi:.2f}]")


def fmt_reconstruction(g: Group) -> str:
    """The reconstruction attack's advantage over the trivial attacker in points of %: one seed with its
    bootstrap 95% interval over prompts, several as mean ± std [95% t-interval] over seeds; – where no
    text was released (model and logit uploads have the membership attack, not this one)."""
    s = g.stats.get("reconstruction_advantage")
    low, high = g.mean("reconstruction_advantage_low"), g.mean("reconstruction_advantage_high")
    if s is None or s.n > 1 or low is None or high is None:
        return fmt_pct_ci(s)
    return f"{100 * s.mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def fmt_pareto(on: bool | None) -> str:
    return UNKNOWN if on is None else ("✓" if on else "")


@dataclass
class Section:
    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    image: str | None = None


def utility_table(groups: Sequence[Group]) -> Section:
    datasets = sorted({g.dataset for g in groups})
    settings: dict[str, dict[str, Group]] = {}
    for g in groups:
        settings.setdefault(g.setting, {})[g.dataset] = g
    metrics = sorted({g.metric for g in groups if g.metric})
    rows = [
        [s, *[fmt_pct_ci(by[d].stats["utility"]) if d in by else DASH for d in datasets]] for s, by in settings.items()
    ]
    return Section(
        "Utility (method rows, dataset columns; mean ± std [95% t-interval] over seeds, %)",
        ["method", *datasets],
        rows,
        f"Metric: {', '.join(metrics) or DASH}. Each method's own result (its baselines are below).",
    )


def rows_table(records: Sequence[RunRecord]) -> Section | None:
    table = baseline_table(records)
    if not table:
        return None
    datasets = sorted({ds for d in table.values() for ds in d})
    rows = [[f"{m}: {label}", *[fmt_pct_ci(d.get(ds)) for ds in datasets]] for (m, label), d in table.items()]
    return Section(
        "Every row of the methods' own tables (baselines included; mean ± std [95% t-interval] over seeds, %)",
        ["method: row", *datasets],
        rows,
        "As in the papers' tables: the baselines each method runs beside itself, on the same data.",
    )


def differences_table(groups: Sequence[Group]) -> Section | None:
    """Each row's difference to its run's reference row, with the paired-bootstrap interval over questions."""
    rows = [
        [g.setting, g.dataset, label, g.reference or DASH, fmt_interval(iv), "yes" if iv.resolved else "no"]
        for g in groups
        for label, iv in g.differences.items()
    ]
    if not rows:
        return None
    return Section(
        "Differences to the reference row (points of %, paired bootstrap 95% interval over test questions)",
        ["method", "dataset", "row", "vs", "Δ [95% CI]", "resolved"],
        rows,
        "The i-th question's score is averaged over the seeds first (a preset task draws its test "
        "questions with the seed); the interval is over questions, the utility table's t-interval over "
        "seeds covers the training noise. Resolved: the interval excludes 0. "
        "Runs without per-question scores are left out.",
    )


def objectives_table(groups: Sequence[Group]) -> Section:
    headers = [
        "method",
        "dataset",
        "utility %",
        "ε",
        "attack success %",
        "membership AUC [95% CI]",
        "MIA advantage",
        "TokenRatio",
        "bytes up / client·round",
        "bytes down / client·round",
        "wall s",
        "client s",
        "server s",
        "CPU s",
        "peak MB",
        "LLM tokens",
        "reconstruction adv. [95% CI]",
        "seeds",
        "Pareto",
    ]
    rows = []
    for g in groups:
        tr = g.stats.get("token_ratio")
        rows.append(
            [
                g.setting,
                g.dataset,
                _objective(g, "utility", fmt_pct, pct=True),
                _objective(g, "epsilon", fmt_eps),
                _objective(g, "attack_success", fmt_pct, pct=True),
                fmt_membership(g),
                _objective(g, "membership_advantage", lambda x: f"{x:.2f}"),
                DASH if tr is None else f"{tr.mean:.2f}",
                _objective(g, "bytes_up_per_client_round", fmt_bytes),
                _objective(g, "bytes_down_per_client_round", fmt_bytes),
                _objective(g, "wall_seconds", fmt_num),
                fmt_num(_mean(g, "client_seconds")),
                fmt_num(_mean(g, "server_seconds")),
                fmt_num(_mean(g, "cpu_seconds")),
                _objective(g, "peak_rss_mb", lambda x: fmt_num(x, 0)),
                _objective(g, "llm_tokens", lambda x: fmt_num(x, 0)),
                fmt_reconstruction(g),
                str(len(g.runs)),
                fmt_pareto(g.pareto),
            ]
        )
    note = (
        "ε: per-token budget of the exponential mechanism (– = the method releases no perturbed text). "
        "Attack success: nearest-neighbour inversion of the perturbed prompts (best of a uniform and a "
        "public-text prior). Membership AUC: the strongest membership-inference attack on what clients "
        "release, the worst target audited: loss(-difference) on uploaded models and logits, likelihood "
        "under the mechanism, token count and text similarity on FedCoT's released prompts (0.5 = chance; "
        "docs/privacy.md); advantage = max TPR − FPR. "
        "Reconstruction adv.: share of private prompt tokens a learned inverse model (trained on public "
        "prompts and their release) recovers beyond copying the released token or guessing the commonest one, "
        "in points of %, the worst client (docs/privacy.md); – where no text leaves a client (uploaded "
        "models and logits are audited by membership inference). "
        "TokenRatio: perturbed rationales vs non-private ones. Bytes from the message log "
        "(per client and round). Peak MB: the run process's peak resident memory (in one process, server and "
        "clients together). LLM tokens: tokens the server LLM generated (the LLM query cost). Means over seeds. "
        "unknown: an objective the setting does not measure (it is not free: see the Pareto front)."
    )
    return Section("Multi-objective table", headers, rows, note)


def _labels(keys: Sequence[str]) -> str:
    return ", ".join(OBJECTIVES[k].label for k in keys)


def pareto_section(groups: Sequence[Group]) -> Section:
    objs = ", ".join(f"{o.label} ({o.direction})" for o in OBJECTIVES.values())
    rows = [
        [g.dataset, g.setting, fmt_pct(g.stats["utility"]), "yes" if g.pareto else UNKNOWN, _labels(g.unknown) or DASH]
        for g in groups
        if g.pareto is not False
    ]
    return Section(
        "Pareto front",
        ["dataset", "method", "utility %", "on the front", "unknown objectives"],
        rows,
        f"Objectives: {objs}; compared among the settings on the same dataset, over those at least one of them "
        "measures. An objective a setting does not measure is unknown: it could take any value. yes: no other "
        "setting can dominate it whatever the unknown values are. unknown: front membership depends on unknown "
        "objectives (another setting is at least as good on every objective both measure). Settings another "
        "surely dominates (every value of both known) are left out.",
    )


def _fmt_score(x: float | None) -> str:
    return UNKNOWN if x is None else f"{x:.3f}"


def score_section(groups: Sequence[Group], weights: Mapping[str, float]) -> Section:
    """The scoring function F per setting, best first on each dataset, with its normalised objectives."""
    sc = scores(groups, weights)
    cols = [k for k in OBJECTIVES if any(sc[id(g)].normalised.get(k) is not None for g in groups)]
    order = sorted(groups, key=lambda g: (g.dataset, sc[id(g)].f is None, -(sc[id(g)].f or 0.0)))
    rows = [
        [
            g.dataset,
            g.setting,
            _fmt_score(sc[id(g)].f),
            _fmt_score(sc[id(g)].f_measured),
            _labels(sc[id(g)].unknown) or DASH,
            *[_fmt_score(sc[id(g)].normalised.get(k)) for k in cols],
        ]
        for g in order
    ]
    w = ", ".join(f"{c}={v:g}" for c, v in weights.items())
    return Section(
        f"Scoring function F (weights {w})",
        ["dataset", "method", "F", "F over measured", "unknown objectives", *[OBJECTIVES[k].label for k in cols]],
        rows,
        "F = Σ w·n / Σ w over the objectives, each normalised on its dataset to [0, 1] (1 = the best setting's "
        "mean, 0 = the worst's; all equal: 1); a category's weight is split evenly over its objectives. F is "
        "unknown when a weighted objective is; 'F over measured' renormalises the weights over the measured ones "
        "and is not comparable with a full F. Change the weights with `fedlsm report --weights` or the grid's "
        "`weights`.",
    )


Column = tuple[str, str, Callable[[Group, str], str]]  # header, aggregated field, formatter


def _pct_cell(g: Group, k: str) -> str:
    return fmt_pct(g.stats.get(k))


def _pct_mean_cell(g: Group, k: str) -> str:
    return fmt_pct(_mean(g, k))


def _num_cell(g: Group, k: str) -> str:
    return fmt_num(_mean(g, k))


def _signed_pts_cell(g: Group, k: str) -> str:
    m = _mean(g, k)
    return DASH if m is None else f"{100 * m:+.1f}"


def _signed_cell(g: Group, k: str) -> str:
    m = _mean(g, k)
    return DASH if m is None else f"{m:+.1f}"


def _count_cell(g: Group, k: str) -> str:
    return fmt_num(_mean(g, k), 0)


def _group_section(groups: Sequence[Group], title: str, columns: Sequence[Column], note: str) -> Section | None:
    """One row per setting with ``columns``; left out when no setting measured any of them."""
    if not any(g.stats.get(k) for g in groups for _, k, _ in columns):
        return None
    rows = [[g.setting, g.dataset, *[fmt(g, k) for _, k, fmt in columns]] for g in groups]
    return Section(title, ["method", "dataset", *[h for h, _, _ in columns]], rows, note)


def clients_section(groups: Sequence[Group]) -> Section | None:
    """Fairness across clients and per-client compute, where the runs measured them."""
    columns: list[Column] = [
        ("clients", "clients_scored", _count_cell),
        ("worst client %", "worst_client_utility", _pct_cell),
        ("spread (max − min) %", "client_utility_spread", _pct_mean_cell),
        ("slowest client s", "slowest_client_seconds", _num_cell),
        ("spread s", "client_seconds_spread", _num_cell),
        ("client MB added", "client_peak_added_mb", _num_cell),
        ("client model MB", "client_model_mb", _num_cell),
        ("server MB added", "server_peak_added_mb", _num_cell),
        ("server model MB", "server_model_mb", _num_cell),
    ]
    note = (
        "Worst client: the lowest per-client utility (the contract's client_utility), spread its max − min, "
        "means over seeds. Client seconds: the time each client took answering the server's requests (message "
        "log). MB added: how far the process's resident memory rose during that side's work (the largest "
        "client's); model MB: parameters + buffers of the models it loaded (fedlsm.usage). The peak MB above "
        "is the whole process's, server and clients together when they share one process."
    )
    return _group_section(groups, "Clients: fairness and per-client compute", columns, note)


def llm_section(groups: Sequence[Group]) -> Section | None:
    """What the server LLM reached and what its queries cost, where the runs measured them."""
    columns: list[Column] = [
        ("LLM utility %", "llm_utility", _pct_cell),
        ("general tasks Δ pts", "llm_general_change", _signed_pts_cell),
        ("perplexity Δ", "llm_perplexity_change", _signed_cell),
        ("requests", "llm_requests", _count_cell),
        ("prompt tokens", "llm_prompt_tokens", _count_cell),
        ("completion tokens", "llm_tokens", _count_cell),
    ]
    note = (
        "LLM utility: the server LLM's result after the method, where it trains or is measured (its "
        "before/after rows are in the methods' own tables above). General tasks Δ: the change of its zero-shot "
        "accuracy on other tasks (after − before, mean over those tasks), perplexity Δ: the change of its "
        "perplexity on held-out text (lower is better), where the method measures them. Means over seeds."
    )
    return _group_section(groups, "LLM side: its result and query cost", columns, note)


def runs_section(records: Sequence[RunRecord]) -> Section:
    rows = [
        [
            r.run_dir.name,
            r.status,
            fmt_pct(r.values.get("utility")),
            fmt_num(r.values.get("wall_seconds")),
            fmt_num(r.values.get("peak_rss_mb"), 0),
        ]
        for r in records
    ]
    return Section("Runs", ["run folder", "status", "utility %", "wall s", "peak MB"], rows)


# -------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, pts: Sequence[tuple[float, Stat]], label: str) -> None:
    ax.errorbar(
        [x for x, _ in pts],
        [100 * s.mean for _, s in pts],
        yerr=[100 * s.std for _, s in pts],
        marker="o",
        capsize=3,
        label=label,
    )


def _label_axes(ax, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("utility (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)


def _save(plt, fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_privacy_utility(groups: Sequence[Group], path: Path) -> bool:
    datasets = sorted({g.dataset for g in groups})
    if not any(g.epsilon is not None and g.mean("utility") is not None for g in groups):
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        top = max((g.fraction or 1.0) for g in groups if g.dataset == ds)
        gs = [g for g in groups if g.dataset == ds and (g.fraction or 1.0) == top and g.mean("utility") is not None]
        for m in sorted({g.method for g in gs}):
            # every group in gs has a utility; the walrus only lets the checker see it
            pts = sorted(
                (g.epsilon, st)
                for g in gs
                if g.method == m
                and g.epsilon is not None
                and not math.isinf(g.epsilon)
                and (st := g.stats["utility"]) is not None
            )
            flat = [st for g in gs if g.method == m and g.epsilon is None and (st := g.stats["utility"]) is not None]
            if pts:
                _errorbar(ax, pts, m)
            for st in flat:
                ax.axhline(100 * st.mean, linestyle="--", color="grey", label=f"{m} (no ε)")
        ax.set_xscale("log")
        eps_ticks = sorted({g.epsilon for g in gs if g.epsilon is not None and not math.isinf(g.epsilon)})
        if eps_ticks:
            from matplotlib.ticker import NullFormatter

            ax.set_xticks(eps_ticks, [f"{e:g}" for e in eps_ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        _label_axes(ax, "ε per token", ds)
    return _save(plt, fig, path)


def plot_communication(groups: Sequence[Group], path: Path) -> bool:
    series = []
    for g in groups:
        rounds: dict[int, list[tuple[int, int]]] = {}
        for r in g.runs:
            for k, v in r.per_round.items():
                rounds.setdefault(int(k), []).append((v["up"], v["down"]))
        if rounds:
            xs = sorted(rounds)
            series.append(
                (
                    f"{g.setting} · {g.dataset}",
                    xs,
                    [sum(u for u, _ in rounds[x]) / len(rounds[x]) for x in xs],
                    [sum(d for _, d in rounds[x]) / len(rounds[x]) for x in xs],
                )
            )
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs, up, down in series:
        (line,) = ax.plot(xs, up, marker="o", label=f"{label} up")
        ax.plot(xs, down, marker="s", linestyle="--", color=line.get_color(), label=f"{label} down")
    ax.set_xlabel("round")
    ax.set_ylabel("bytes (all clients)")
    ax.set_yscale("log")
    ax.set_xticks(sorted({x for _, xs, _, _ in series for x in xs}))
    ax.set_title("Communication per round")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_data_fraction(groups: Sequence[Group], path: Path) -> bool:
    if len({g.fraction for g in groups if g.fraction is not None}) < 2:
        return False
    datasets = sorted({g.dataset for g in groups})
    plt = _plt()
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        lines: dict[str, list[tuple[float, Stat]]] = {}
        for g in groups:
            if g.dataset == ds and g.fraction is not None and g.stats["utility"] is not None:
                lines.setdefault(g.method + (f" (ε={g.epsilon:g})" if g.epsilon is not None else ""), []).append(
                    (g.fraction, g.stats["utility"])
                )
        for label, pts in sorted(lines.items()):
            _errorbar(ax, [(100 * f, s) for f, s in sorted(pts, key=lambda p: p[0])], label)
        _label_axes(ax, "training data used (%)", ds)
    return _save(plt, fig, path)


# ------------------------------------------------------------------------------------------ render


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.headers:
            out.append("| " + " | ".join(map(_md_cell, s.headers)) + " |")
            out.append("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(s.headers))) + " |")
            out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in s.rows]
            if not s.rows:
                out.append("| " + " | ".join(DASH for _ in s.headers) + " |")
            out.append("")
        if s.image:
            out += [f"![{s.title}]({s.image})", ""]
        if s.note:
            out += [s.note, ""]
    return "\n".join(out)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em}"
    "td:not(:first-child){text-align:right}th{background:#f3f3f3}p{color:#444}img{max-width:100%}"
)


def render_html(title: str, sections: Sequence[Section]) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
        f"</head><body><h1>{e(title)}</h1>"
    ]
    for s in sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        if s.headers:
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.headers) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in s.rows]
            out.append("</table>")
        if s.image:
            out.append(f"<img src='{e(s.image)}' alt='{e(s.title)}'>")
        if s.note:
            out.append(f"<p>{e(s.note)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def summary_json(groups: Sequence[Group], weights: Mapping[str, float]) -> dict[str, Any]:
    """summary.json: every group's aggregates, and its F with the normalised objectives behind it."""
    sc = scores(groups, weights)
    rows = [
        {**d, "F": sc[id(g)].f, "F_measured": sc[id(g)].f_measured, "normalised": sc[id(g)].normalised}
        for g, d in zip(groups, to_json(groups))
    ]
    return {"weights": dict(weights), "groups": rows}


def write_report(
    runs_dir: str | Path,
    out_dir: str | Path | None = None,
    title: str | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Collect, aggregate and write ``report.md``, ``report.html``, ``summary.json`` and the PNGs.
    ``weights``: the scoring function's, per category (default: every category 1)."""
    runs_dir = Path(runs_dir)
    out = Path(out_dir) if out_dir else runs_dir
    out.mkdir(parents=True, exist_ok=True)
    records = collect(runs_dir)
    groups = aggregate(records)
    sections = [utility_table(groups)]
    for extra in (rows_table(records), differences_table(groups)):
        if extra:
            sections.append(extra)
    weights = dict(weights or DEFAULT_WEIGHTS)
    sections += [objectives_table(groups), pareto_section(groups), score_section(groups, weights)]
    sections += [s for s in (clients_section(groups), llm_section(groups)) if s]
    images = []
    for name, fn, t in (
        ("privacy_utility.png", plot_privacy_utility, "Privacy–utility (utility vs ε)"),
        ("communication.png", plot_communication, "Communication per round"),
        ("data_fraction.png", plot_data_fraction, "Utility vs training data size"),
    ):
        if groups and fn(groups, out / name):
            sections.append(Section(t, image=name))
            images.append(out / name)
    sections.append(runs_section(records))
    failed = [r for r in records if r.status != "done"]
    if failed:
        sections[-1].note = f"{len(failed)} run(s) not done are left out of every aggregate."
    title = title or f"Benchmark report: {runs_dir.name}"
    (out / "report.md").write_text(render_markdown(title, sections))
    (out / "report.html").write_text(render_html(title, sections))
    (out / "summary.json").write_text(json.dumps(summary_json(groups, weights), indent=2))
    return {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "summary": out / "summary.json",
        "images": images,
        "groups": groups,
        "records": records,
        "sections": sections,
    }


TERMINAL_COLUMNS = (
    "method",
    "dataset",
    "utility %",
    "ε",
    "attack success %",
    "bytes up / client·round",
    "wall s",
    "peak MB",
    "LLM tokens",
    "Pareto",
)


def rich_table(section: Section, columns: Sequence[str] | None = None):
    """A section as a rich Table for the terminal, optionally only some of its columns."""
    from rich.table import Table

    keep = [i for i, h in enumerate(section.headers) if columns is None or h in columns]
    t = Table(title=section.title)
    for i in keep:
        t.add_column(section.headers[i], justify="left" if i == 0 else "right")
    for r in section.rows:
        t.add_row(*[r[i] for i in keep])
    return t
