"""Inversion attacks a semi-honest server can run on perturbed prompts, to measure leakage.

The attacker knows the mechanism (embeddings, ε, candidate sets: all public) and sees the
perturbed token ids; it guesses each original token. Seeing ids rather than re-tokenizing the
released text makes the attacker slightly stronger than a real server, so the measured success
rate is an upper estimate.

* :func:`nearest_neighbour_attack` - guess the token closest to the observed one in embedding
  space. Over the full vocabulary the closest token to ``y`` is ``y`` itself (cosine 1), so this
  guesses "unchanged" and its success rate equals the fraction of tokens the mechanism left
  as they were; with a prior whose support excludes ``y`` it maps ``y`` to the nearest plausible
  token.
* :func:`bayesian_attack` - the maximum a posteriori guess ``argmax_x Pr[M(x) = y]·prior(x)``,
  using the exact mechanism probabilities (of whichever candidate rule the mechanism uses). This
  is the optimal single-token guess when the prior is the true distribution of private tokens.

Priors are vectors over the vocabulary (``None`` = uniform); :func:`corpus_prior` estimates one
from public text. Only tokens with positive prior are considered as guesses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedlsm.errors import ConfigError
from fedlsm.privacy.mechanism import ExponentialMechanism


def corpus_prior(tokenizer, texts: Sequence[str], vocab_size: int, smoothing: float = 0.0) -> torch.Tensor:
    """Token frequencies of a public corpus as a prior over ``vocab_size`` ids (float64, sums to 1).

    ``smoothing`` adds that pseudo-count to every token (0 keeps the support to seen tokens,
    which also keeps the Bayesian attack cheap).
    """
    if smoothing < 0:
        raise ConfigError("smoothing", f"must be ≥ 0, got {smoothing}")
    counts = torch.full((vocab_size,), float(smoothing), dtype=torch.float64)
    ids = [t for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for t in row if t < vocab_size]
    if ids:
        counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab_size).double()
    if counts.sum() <= 0:
        raise ConfigError("prior corpus", "has no tokens in the vocabulary", "pass non-empty public texts")
    return counts / counts.sum()


def _support(mech: ExponentialMechanism, prior: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with positive prior, their log prior) on the mechanism's device."""
    v = mech.vocab_size
    if prior is None:
        ids = torch.arange(v, device=mech.device)
        return ids, torch.full((v,), -math.log(v), dtype=torch.float64, device=mech.device)
    p = torch.as_tensor(prior, dtype=torch.float64).reshape(-1)
    if p.numel() != v:
        raise ConfigError("prior", f"has {p.numel()} entries but the vocabulary has {v}")
    if not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ConfigError("prior", "must be finite, non-negative and not all zero")
    ids = (p > 0).nonzero().squeeze(1)
    return ids.to(mech.device), (p[ids] / p.sum()).log().to(mech.device)


def nearest_neighbour_attack(
    mech: ExponentialMechanism, perturbed_ids, *, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """Guess each original token as the support token most cosine-similar to the observed one.

    Ties go to the observed token itself (duplicate embeddings exist in real vocabularies).
    """
    ys = torch.as_tensor(perturbed_ids, dtype=torch.long)
    shape = ys.shape
    flat = ys.reshape(-1).to(mech.device)
    support, _ = _support(mech, prior)
    in_support = torch.zeros(mech.vocab_size, dtype=torch.bool, device=mech.device)
    in_support[support] = True
    guess = flat.clone()  # a token in the support is its own nearest neighbour
    outside = torch.unique(flat[~in_support[flat]])
    if outside.numel():
        unit = mech.unit_embeddings
        table = torch.empty(mech.vocab_size, dtype=torch.long, device=mech.device)
        for s in range(0, outside.numel(), mech.chunk_rows):
            y = outside[s : s + mech.chunk_rows]
            table[y] = support[(unit[y] @ unit[support].T).argmax(1)]
        miss = ~in_support[flat]
        guess[miss] = table[flat[miss]]
    return guess.reshape(shape).cpu()


def bayesian_attack(mech: ExponentialMechanism, perturbed_ids, *, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Maximum a posteriori guess ``argmax_x Pr[M(x) = y] · prior(x)`` for each observed ``y``.

    Needs ``log Z(x)`` for every support token: one similarity row each in full-vocabulary
    mode (for a uniform prior over a 49k vocabulary that is a V × V pass, about a minute on
    two CPU cores), a top-k table lookup otherwise.
    """
    ys = torch.as_tensor(perturbed_ids, dtype=torch.long)
    shape = ys.shape
    if math.isinf(mech.epsilon):  # Pr[M(x) = y] = 1[x = y]: the MAP guess is y when y is possible
        return nearest_neighbour_attack(mech, ys, prior=prior)
    flat = ys.reshape(-1).to(mech.device)
    support, log_prior = _support(mech, prior)
    uniq, inv = torch.unique(flat, return_inverse=True)
    guess_u = torch.empty_like(uniq)
    scale = mech.scale
    if mech.top_k is None:
        log_z = mech.log_normalizers(support).to(mech.device)
        bias = log_prior - log_z  # the part of the log posterior that depends on x only
        unit = mech.unit_embeddings
        tau = mech.min_similarity  # rantext: only x with cos(x, y) ≥ τ (or x = y) can output y
        for s in range(0, uniq.numel(), mech.chunk_rows):
            y = uniq[s : s + mech.chunk_rows]
            sims = (unit[y] @ unit[support].T).clamp_(-1.0, 1.0)
            scores = sims.double() * scale + bias
            if tau is not None:
                scores[(sims < tau) & (y[:, None] != support[None, :])] = -math.inf
            best = support[scores.argmax(1)]
            impossible = torch.isinf(scores.max(1).values)  # no support token can output y: fall back to NN
            if impossible.any():
                best[impossible] = nearest_neighbour_attack(mech, y[impossible], prior=prior).to(mech.device)
            guess_u[s : s + mech.chunk_rows] = best
    else:
        # Only x whose candidate set contains y can have produced y: score every (x, candidate)
        # pair once and keep, for each y, the best x (smallest id among ties).
        cand, sims = mech.candidates(support)
        logits = sims.double() * scale
        scores = (logits - torch.logsumexp(logits, 1, keepdim=True) + log_prior[:, None]).reshape(-1)
        target = cand.reshape(-1)
        best = torch.full((mech.vocab_size,), -math.inf, dtype=torch.float64, device=mech.device)
        best.scatter_reduce_(0, target, scores, reduce="amax")
        win = scores == best[target]
        xs = support.repeat_interleave(cand.shape[1])
        table = torch.full((mech.vocab_size,), mech.vocab_size, dtype=torch.long, device=mech.device)
        table.scatter_reduce_(0, target[win], xs[win], reduce="amin")
        guess_u = table[uniq]
        impossible = guess_u == mech.vocab_size  # no support token can output y: fall back to NN
        if impossible.any():
            guess_u[impossible] = nearest_neighbour_attack(mech, uniq[impossible], prior=prior).to(mech.device)
    return guess_u[inv].reshape(shape).cpu()


def success_rate(original_ids, guesses, mask=None) -> float:
    """Fraction of (masked) positions where the guess equals the original token."""
    orig = torch.as_tensor(original_ids).reshape(-1)
    g = torch.as_tensor(guesses).reshape(-1)
    if mask is not None:
        keep = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        orig, g = orig[keep], g[keep]
    return float((orig == g).double().mean()) if orig.numel() else 0.0


ATTACKS = ("nearest_neighbour", "bayesian")


def attack_sanitized(
    result, mech: ExponentialMechanism, *, prior: torch.Tensor | None = None, attacks: Sequence[str] = ATTACKS
) -> dict[str, float]:
    """Run the chosen attacks on a :class:`~fedlsm.privacy.sanitizer.SanitizeResult`.

    Success is measured over the private tokens only (those the mechanism perturbed): public and
    special tokens were released on purpose. Note the Bayesian attack's cost with a uniform prior
    in full-vocabulary mode (see :func:`bayesian_attack`).
    """
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ConfigError("attacks", f"unknown attack(s) {sorted(unknown)}", f"choose from {list(ATTACKS)}")
    orig = torch.tensor([t for row in result.input_ids for t in row], dtype=torch.long)
    seen = torch.tensor([t for row in result.token_ids for t in row], dtype=torch.long)
    private = torch.tensor([b for row in result.perturbed for b in row], dtype=torch.bool)
    ys = seen[private]
    out: dict[str, float] = {"private_tokens": int(private.sum())}
    if "nearest_neighbour" in attacks:
        out["nearest_neighbour"] = success_rate(orig[private], nearest_neighbour_attack(mech, ys, prior=prior))
    if "bayesian" in attacks:
        out["bayesian"] = success_rate(orig[private], bayesian_attack(mech, ys, prior=prior))
    return out


def inversion_success(result, sanitizer, public_texts: Sequence[str] = ()) -> dict[str, float] | None:
    """Nearest-neighbour inversion success on what a :class:`TextSanitizer` released, for run reports.

    Two attackers: a uniform prior (guesses "unchanged") and a prior from public text (maps each
    observed token to its nearest token seen in ``public_texts``); ``success_rate`` is the better of
    the two. ``None`` when the result has no token ids aligned with its inputs (a learned perturber).
    """
    if result.token_ids is None or any(len(a) != len(b) for a, b in zip(result.input_ids, result.token_ids)):
        return None
    mech = sanitizer.mechanism
    out = attack_sanitized(result, mech, attacks=("nearest_neighbour",))
    if public_texts:
        prior = corpus_prior(sanitizer.tokenizer, public_texts, mech.vocab_size)
        out["nearest_neighbour_public_prior"] = attack_sanitized(
            result, mech, prior=prior, attacks=("nearest_neighbour",)
        )["nearest_neighbour"]
    out["success_rate"] = max(v for k, v in out.items() if k.startswith("nearest"))
    return out
