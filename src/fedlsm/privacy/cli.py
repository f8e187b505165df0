"""``fedlsm privacy-curve``: attack success and TokenRatio vs ε, as a table, a JSON and a PNG.

The lead CLI registers :func:`privacy_curve_command`; ``python -m fedlsm.privacy.cli`` runs it alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from fedlsm.data.builtin import MAX_GENERATED
from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.privacy.curve import PAPER_TABLE6, PrivacyCurve, json_safe, privacy_curve
from fedlsm.userfiles import read_user_text


def parse_epsilons(spec: str) -> list[float]:
    """``"1,3,5,10"`` → ``[1.0, 3.0, 5.0, 10.0]``; ``inf`` is allowed."""
    from fedlsm.privacy.accounting import check_epsilon

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ConfigError("epsilons", "is empty", "give a comma-separated list such as 1,3,5,10")
    out = []
    for p in parts:
        try:
            value = float(p)
        except ValueError:
            raise ConfigError(
                "epsilons", f"'{p}' is not a number", "give a comma-separated list such as 1,3,5,10"
            ) from None
        out.append(check_epsilon(value, "epsilons"))
    return out


def read_texts(path: Path, field_names: tuple[str, ...] = ("question", "text", "prompt")) -> list[str]:
    """Prompts from a ``.txt`` file (one per line) or a ``.jsonl`` file (a question/text/prompt field)."""
    lines = [ln for ln in read_user_text(path, "texts").splitlines() if ln.strip()]
    if path.suffix != ".jsonl":
        return lines
    out = []
    for i, ln in enumerate(lines, 1):
        try:
            row = json.loads(ln)
        except json.JSONDecodeError as e:
            raise ConfigError("texts", f"line {i} of '{path}' is not JSON ({e.msg})") from None
        key = next((k for k in field_names if isinstance(row, dict) and k in row), None)
        if key is None:
            raise ConfigError("texts", f"line {i} of '{path}' has none of the fields {list(field_names)}")
        out.append(str(row[key]))
    return out


def _default_texts(n: int) -> list[str]:
    from fedlsm.data.builtin import make_arith

    return [ex.question for ex in make_arith(n_train=n, n_test=10).train]


def _prompts_and_corpus(
    texts: Path | None, task: str | None, n: int, prior_corpus: Path | None, seed: int
) -> tuple[list[str], list[str]]:
    """The private prompts and the attacker's public corpus: from files, a fedlsm task, or built-in arith."""
    if texts is not None and task is not None:
        raise ConfigError("--texts", "and --task both give prompts", "pass only one of them")
    corpus = read_texts(prior_corpus) if prior_corpus is not None else None
    if task is not None:
        from fedlsm.data.loaders import load_task
        from fedlsm.data.task import format_question

        t = load_task(task, n_test=n, n_train=300, seed=seed)
        prompts = [format_question(e) for e in t.test]
        return prompts[:n], corpus or [format_question(e) for e in t.train]
    prompts = read_texts(texts) if texts is not None else _default_texts(n)
    return prompts[:n], corpus or _public_corpus()


def _public_corpus() -> list[str]:
    # Public text of the same domain the attacker can be assumed to have: arith questions from
    # another seed (disjoint from the default private texts up to chance collisions).
    from fedlsm.data.builtin import make_arith

    return [ex.question for ex in make_arith(n_train=300, n_test=10, seed=1).train]


def _paper_cell(eps: float) -> str:
    """FedCoT Table 6 (FedCoT-E) at this ε: CQA's value and the range over its four tasks."""
    row = PAPER_TABLE6.get(eps)
    if row is None:
        return "-"
    return f"{row['CQA'] / 100:.2f} ({min(row.values()) / 100:.2f}-{max(row.values()) / 100:.2f})"


def print_table(curve: PrivacyCurve) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"privacy curve - {curve.model}, {curve.n_texts} prompts, prior={curve.prior}")
    cols = ("mechanism", "ε", "tokens", "same", "NN", "Bayes", "prior", "TR prompt", "TR rat.", "paper TR rat.")
    for col in cols:
        t.add_column(col, justify="left" if col == "mechanism" else "right")

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    for p in curve.points:
        t.add_row(
            p.mechanism,
            f"{p.epsilon:g}",
            str(p.private_tokens),
            pct(p.unchanged_fraction),
            pct(p.nearest_neighbour_success),
            pct(p.bayesian_success),
            pct(p.prior_guess_success),
            f"{p.token_ratio_prompt:.3f}",
            "-" if p.token_ratio_rationale is None else f"{p.token_ratio_rationale:.3f}",
            _paper_cell(p.epsilon),
        )
    console = Console(width=max(Console().width, 130))  # the 10 columns need it; narrow pipes wrap headers
    console.print(t)
    console.print(
        "tokens: private tokens; same: of those, output = input; NN/Bayes: recovered by the "
        "inversion attacks; prior: by always guessing the most frequent token; TR: TokenRatio of "
        "the perturbed prompt / rationale vs the original; paper: FedCoT Table 6, FedCoT-E, CQA "
        "(range over CQA/OBQA/BoolQ/ARC-E).",
        style="dim",
    )
    for p in curve.points:
        if (r := p.reconstruction) is not None:
            lo, hi = r["advantage_ci"]
            console.print(
                f"learned reconstruction, {p.mechanism} ε={p.epsilon:g}: recovery {pct(r['recovery'])}, baseline "
                f"{pct(r['baseline'])}, advantage {100 * r['advantage']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            )
    for name, p in {p.mechanism: p for p in curve.points}.items():
        console.print(f"guarantee of {name} (at ε={p.epsilon:g}): {p.guarantee}", style="dim")


def plot_curve(curve: PrivacyCurve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    rules = list(dict.fromkeys(p.rule for p in curve.points))
    eps: list[float] = []
    for rule in rules:
        pts = [p for p in curve.points if p.rule == rule and math.isfinite(p.epsilon)]
        eps = [p.epsilon for p in pts]
        ax1.plot(eps, [p.bayesian_success for p in pts], "s-", label=f"{rule}: Bayesian attack")
        ax1.plot(eps, [p.nearest_neighbour_success for p in pts], "o:", label=f"{rule}: nearest-neighbour")
        ax2.plot(eps, [p.token_ratio_prompt for p in pts], "o-", label=f"{rule}: TokenRatio (prompt)")
        if any(p.token_ratio_rationale is not None for p in pts):
            ax2.plot(eps, [p.token_ratio_rationale for p in pts], "s--", label=f"{rule}: TokenRatio (rationale)")
    paper = sorted(PAPER_TABLE6)
    ax2.plot(paper, [PAPER_TABLE6[e]["CQA"] / 100 for e in paper], "k*", label="paper, FedCoT-E CQA (rationale)")
    ax1.set(xlabel="ε per token", ylabel="private tokens recovered", title="leakage", ylim=(0, 1.02))
    ax2.set(xlabel="ε per token", ylabel="fraction", title="utility", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        if eps and min(eps) > 0 and max(eps) / min(eps) >= 10:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{curve.model}, {curve.n_texts} prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def privacy_curve_command(
    epsilons: Annotated[str, typer.Option(help="Comma-separated per-token ε values (inf allowed).")] = "1,3,5,10",
    model: Annotated[
        str, typer.Option(help="Model whose tokenizer and input embeddings define the mechanism.")
    ] = "smollm2",
    texts: Annotated[
        Path | None,
        typer.Option(
            help="Prompts: .txt (one per line) or .jsonl (question/text/prompt field). "
            "Default: built-in arith questions."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="Take the prompts from a fedlsm task's test split (e.g. cqa, from the local data folder) "
            "and the attacker's public corpus from its training split."
        ),
    ] = None,
    n_texts: Annotated[int, typer.Option(help="How many prompts to use.")] = 50,
    mechanisms: Annotated[
        str, typer.Option(help="Comma-separated candidate rules to compare: full, custext, rantext.")
    ] = "full",
    top_k: Annotated[int, typer.Option(help="custext: candidate-set size k.")] = 20,
    rantext_gap: Annotated[
        float, typer.Option(help="rantext: candidates lie within this many nats of the input's weight.")
    ] = 1.0,
    public: Annotated[
        str | None,
        typer.Option(help="Comma-separated public tokens: punctuation, stopwords, choice_letters, or words."),
    ] = None,
    prior: Annotated[
        str,
        typer.Option(
            help="Attacker prior: 'corpus' (token frequencies of public text) or 'uniform' (slow: a V×V pass per ε)."
        ),
    ] = "corpus",
    prior_corpus: Annotated[
        Path | None,
        typer.Option(
            help="Public text for the corpus prior (.txt/.jsonl). Default: built-in arith questions of another seed."
        ),
    ] = None,
    rationales: Annotated[
        bool, typer.Option(help="Also generate rationales with the model and report their TokenRatio (slow on CPU).")
    ] = False,
    rationale_epsilons: Annotated[
        str | None, typer.Option(help="With --rationales: only at these ε (comma-separated); default: every ε.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Rationale length in tokens (with --rationales).")] = 96,
    reconstruction: Annotated[
        bool, typer.Option(help="Also run the learned reconstruction attack, trained on the public corpus.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder for privacy_curve.json and privacy_curve.png.")] = Path(
        "runs/privacy-curve"
    ),
) -> PrivacyCurve:
    """Measure how much private prompt content leaks, and how much survives, as ε grows."""
    from fedlsm.privacy.attacks import corpus_prior
    from fedlsm.privacy.sanitizer import TextSanitizer

    eps = parse_epsilons(epsilons)
    if n_texts < 1:
        raise ConfigError("n_texts", f"must be ≥ 1, got {n_texts}")
    if texts is None and n_texts > MAX_GENERATED:  # the default prompts are generated arith questions
        raise ConfigError("n_texts", f"at most {MAX_GENERATED} without --texts, got {n_texts}", "pass --texts FILE")
    if prior not in ("corpus", "uniform"):
        raise ConfigError("prior", f"must be 'corpus' or 'uniform', got {prior!r}")
    rules = [m.strip() for m in mechanisms.split(",") if m.strip()]
    prompts, corpus = _prompts_and_corpus(texts, task, n_texts, prior_corpus, seed)
    public_tokens = [p.strip() for p in public.split(",") if p.strip()] if public else None
    sanitizers = [
        TextSanitizer.from_model(
            model,
            epsilon=eps[0],
            candidates=rule,
            top_k=top_k if rule == "custext" else None,
            rantext_gap=rantext_gap,
            public_tokens=public_tokens,
        )
        for rule in rules
    ]
    if not sanitizers:
        raise ConfigError("mechanisms", "is empty", "give a comma-separated list such as full,custext,rantext")
    sanitizer = sanitizers[0]
    prior_vec = None
    if prior == "corpus":
        prior_vec = corpus_prior(sanitizer.tokenizer, corpus, sanitizer.mechanism.vocab_size)
    generator, gen_config = None, None
    if rationales:
        from fedlsm.models import GenerationConfig, HFGenerator

        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be ≥ 1, got {max_new_tokens}")
        generator = HFGenerator.from_name(model, batch_size=16)
        gen_config = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed)
    curve = privacy_curve(
        sanitizers,
        prompts,
        eps,
        prior=prior_vec,
        prior_name=prior,
        model_name=model,
        seed=seed,
        generator=generator,
        generation_config=gen_config,
        rationale_epsilons=parse_epsilons(rationale_epsilons) if rationale_epsilons else None,
        public_texts=corpus if reconstruction else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "privacy_curve.json").write_text(
        json.dumps(json_safe(curve.as_dict()), indent=2, ensure_ascii=False), encoding="utf-8"
    )
    plot_curve(curve, out / "privacy_curve.png")
    print_table(curve)
    typer.echo(f"wrote {out / 'privacy_curve.json'} and {out / 'privacy_curve.png'}")
    return curve


def main() -> None:  # pragma: no cover - thin wrapper
    app = typer.Typer(add_completion=False)
    app.command()(privacy_curve_command)
    try:
        app(standalone_mode=False)
    except FedLSMError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
