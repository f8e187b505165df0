"""The token-level exponential mechanism of FedCoT (§2.1, §3.1).

Each private token ``x`` is replaced by a token ``y`` drawn from the candidate set ``C(x)`` with

    Pr[M(x) = y] = exp(ε·u(x, y) / (2Δu)) / Σ_{y' ∈ C(x)} exp(ε·u(x, y') / (2Δu)),

where ``u(x, y)`` is the cosine similarity of the two tokens' embeddings.

Candidate sets:

* ``top_k=None`` (default, the paper's mechanism): ``C(x)`` is the whole output vocabulary, the
  same for every input, so the mechanism is ε-DP between *any* two tokens.
* ``candidates="custext"``, ``top_k=k`` (CusText-style): ``C(x)`` is the ``k`` tokens most similar
  to ``x`` (``x`` itself always included). This keeps the output close to the input at a given ε,
  but the supports of neighbouring inputs differ: if ``y ∈ C(x)`` and ``y ∉ C(x')`` then
  ``Pr[M(x') = y] = 0`` and the ratio is unbounded. The ε-DP guarantee therefore holds **only among
  inputs that share the same candidate set**; between other inputs the output can rule some of
  them out completely.
* ``candidates="rantext"`` (after InferDPT's RANTEXT adjacency lists): ``C(x)`` is ``x`` and every
  token whose cosine similarity to ``x`` is at least ``τ(ε) = 1 - 2Δu·gap/ε``, i.e. every output
  whose weight is within ``gap`` nats of the input's own weight under the full mechanism. The
  bound tightens as ε grows; once ``τ ≤ -1`` (ε ≤ gap·Δu) the set is the whole vocabulary and the
  mechanism *is* the full one, with its guarantee. Otherwise the set depends on ``x`` and the
  guarantee is CusText's: ε-DP only among inputs sharing a candidate set. InferDPT itself redraws
  the radius for every token (the norm of Laplace noise on the embedding); a random radius does not
  give an ε bound between inputs with different neighbourhoods either, so we keep it fixed and
  auditable.

Outputs can be restricted once for all inputs (``exclude_outputs``, e.g. the tokenizer's special
tokens). A restriction that does not depend on the input leaves the guarantee unchanged.

Cost: the unit-normalised embedding matrix is the only O(V·d) state; top-k tables are O(V·k)
and filled lazily, row chunk by row chunk, for the tokens actually seen (or all at once with
:meth:`ExponentialMechanism.precompute`). No V×V matrix is ever held. Full-vocabulary sampling is
exact rejection sampling (uniform proposals, accepted with probability
``exp(ε(u(x, y) - 1)/(2Δu))``), which needs a handful of d-dimensional dot products per token
instead of a V-long similarity row; when ε is so large that acceptance gets rare it switches to
computing the exact similarity rows per unique token.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch

from fedlsm.errors import ConfigError, FedLSMError
from fedlsm.privacy.accounting import check_epsilon

# Δu, the sensitivity of the utility. u(x, y) = cos(e_x, e_y) lies in [-1, 1] for every pair, so
# replacing the input x by any x' changes u(·, y) by at most 1 - (-1) = 2, for every output y.
# We do not narrow the range: real LM embeddings do contain pairs with negative cosine, and a
# range measured on the data would itself depend on the vocabulary in ways users cannot audit.
SENSITIVITY = 2.0

# Work sizes, in float32 elements, for the temporary buffers of one chunk (~64 MB).
_CHUNK_ELEMENTS = 1 << 24
# Rejection sampling work sizes: proposals whose embedding rows are gathered at once, proposals
# per token and round at most, and proposals per group of a round. On CPU a chunk stays small so
# that its rows stay in cache; on an accelerator it is large so that kernel launches do not dominate.
_PROPOSALS_PER_CHUNK = {"cpu": 256, "other": 1 << 16}
_MAX_PROPOSALS_PER_ROUND = 1024
_ROUND_ELEMENTS = 1 << 20
_MAX_ROUNDS = 100  # then the exact rows take over (rarely reached: each round keeps a fixed share)
# Cost of one rejection proposal (gathering a random embedding row and one dot product) in units of
# one entry of a similarity row computed by matrix multiplication. Measured on CPU; the accelerator
# value is the same ratio, not yet measured on one (only speed depends on it, never correctness).
_PROPOSAL_COST = {"cpu": 24.0, "other": 24.0}

# The candidate-set rules (privacy.mechanism); see the module docstring for each one's guarantee.
MECHANISMS = ("full", "custext", "rantext")


def _per_device(table: dict, device: torch.device):
    return table["cpu"] if device.type == "cpu" else table["other"]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def os_entropy_seed() -> int:
    """A 63-bit seed from the OS entropy source (``secrets``), never from the run's seed: torch's own
    ``Generator.seed()`` may fall back to the clock, which an observer can guess."""
    import secrets

    return secrets.randbits(63)


class ExponentialMechanism:
    """Token-level exponential mechanism over cosine similarity of embeddings.

    Args:
        embeddings: ``V × d`` matrix (torch tensor or numpy array), one row per token.
        vocab: the ``V`` token strings, in row order (used for validation and display).
        epsilon: per-token privacy budget ε in (0, ∞]; ``math.inf`` returns inputs unchanged.
        top_k: candidate-set size of the ``custext`` rule. See the module docstring for what
            it does to the guarantee.
        candidates: ``"full"``, ``"custext"`` or ``"rantext"`` (default: ``"custext"`` when
            ``top_k`` is given, else ``"full"``).
        rantext_gap: for ``"rantext"``, how many nats below the input's own weight a candidate may
            lie (``C(x) = {y : cos(x, y) ≥ 1 - 2Δu·gap/ε} ∪ {x}``).
        exclude_outputs: token ids the mechanism never outputs (input-independent).
        center: subtract the mean embedding before normalising. LM input embeddings are very
            anisotropic (SmolLM2: median cosine 0.57), which squeezes all utilities into a narrow
            band; centring spreads them. The utility stays a cosine, so Δu = 2 still holds.
        device: where to compute (default: CUDA when available, else CPU).
        chunk_rows: rows per chunk when computing similarity rows.
        precompute: fill the whole top-k table now instead of lazily.
        show_progress: progress bars for long precomputations.
    """

    sensitivity: float = SENSITIVITY

    def __init__(
        self,
        embeddings,
        vocab: Sequence[str],
        *,
        epsilon: float,
        top_k: int | None = None,
        candidates: str | None = None,
        rantext_gap: float = 1.0,
        exclude_outputs: Iterable[int] = (),
        center: bool = False,
        device: str | torch.device | None = None,
        chunk_rows: int = 1024,
        precompute: bool = False,
        show_progress: bool = True,
    ):
        self.epsilon = check_epsilon(epsilon)
        self.device = torch.device(device) if device is not None else _default_device()
        emb = torch.as_tensor(embeddings)
        if emb.ndim != 2 or emb.shape[0] < 2 or emb.shape[1] < 1:
            raise ConfigError("embeddings", f"must be a V × d matrix with V ≥ 2, got shape {tuple(emb.shape)}")
        if not emb.is_floating_point():
            raise ConfigError("embeddings", f"must hold floating-point values, got {emb.dtype}")
        if vocab is None or len(vocab) != emb.shape[0]:
            raise ConfigError(
                "vocab",
                f"has {len(vocab) if vocab is not None else 0} entries but the embedding matrix has "
                f"{emb.shape[0]} rows",
                "pass one token string per embedding row, in row order",
            )
        emb = emb.detach().to(self.device, torch.float32)
        if not torch.isfinite(emb).all():
            raise ConfigError("embeddings", "contain NaN or infinite values")
        if center:
            emb = emb - emb.mean(0, keepdim=True)
        # Unit rows once: every cosine afterwards is a plain dot product. An all-zero row gets
        # cosine 0 with everything, which is still within the [-1, 1] range Δu assumes.
        self._unit = torch.nn.functional.normalize(emb, dim=1)
        self.vocab = list(vocab)
        self.vocab_size = emb.shape[0]
        self.centered = center
        self.chunk_rows = max(1, int(chunk_rows))
        self.show_progress = show_progress

        allowed = torch.ones(self.vocab_size, dtype=torch.bool, device=self.device)
        excluded = sorted({int(i) for i in exclude_outputs})
        if excluded and (excluded[0] < 0 or excluded[-1] >= self.vocab_size):
            raise ConfigError(
                "exclude_outputs", f"ids must be in [0, {self.vocab_size}), got {excluded[0]}..{excluded[-1]}"
            )
        allowed[excluded] = False
        n_allowed = int(allowed.sum())
        if n_allowed < 1:
            raise ConfigError("exclude_outputs", "excludes every token", "leave at least one output token")
        self._allowed = allowed
        self._allowed_ids = allowed.nonzero().squeeze(1)

        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int):
                raise ConfigError("top_k", f"must be an integer or None, got {top_k!r}")
            if not 1 <= top_k <= n_allowed:
                raise ConfigError(
                    "top_k",
                    f"must be between 1 and the {n_allowed} output tokens, got {top_k}",
                    "use a small k such as 20-100, or None for the full vocabulary",
                )
            if top_k == n_allowed:
                top_k = None  # every token's candidate set is the whole output set: the full mechanism
                candidates = "full"
        self.candidates_rule = _check_rule(candidates, top_k, rantext_gap)
        self.rantext_gap = float(rantext_gap)
        self.top_k = top_k
        self._table = _CandidateTable(self) if top_k is not None else None
        if precompute and self._table is not None:
            self._table.fill_all()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_model(
        cls, spec: str = "smollm2", *, epsilon: float, top_k: int | None = None, **kwargs
    ) -> ExponentialMechanism:
        """Mechanism over a causal LM's input embeddings; special tokens are never output."""
        from fedlsm.privacy.embeddings import model_embeddings

        emb, vocab, tok = model_embeddings(spec)
        special = [i for i in tok.all_special_ids if i < emb.shape[0]]
        kwargs.setdefault("exclude_outputs", special)
        return cls(emb, vocab, epsilon=epsilon, top_k=top_k, **kwargs)

    def with_epsilon(self, epsilon: float) -> ExponentialMechanism:
        """The same mechanism at another ε, sharing embeddings and the top-k table."""
        other = copy.copy(self)
        other.epsilon = check_epsilon(epsilon)
        return other

    def precompute(self) -> ExponentialMechanism:
        """Fill the whole top-k table now (no-op for the full-vocabulary mechanism)."""
        if self._table is not None:
            self._table.fill_all()
        return self

    # ------------------------------------------------------------------ properties
    @property
    def scale(self) -> float:
        """The factor ε / (2Δu) in front of the utility."""
        return self.epsilon / (2 * self.sensitivity)

    @property
    def unit_embeddings(self) -> torch.Tensor:
        """Unit-normalised embeddings (V × d) on the mechanism's device; do not modify."""
        return self._unit

    @property
    def allowed_outputs(self) -> torch.Tensor:
        """Boolean mask (V,) of the tokens the mechanism may output."""
        return self._allowed

    @property
    def min_similarity(self) -> float | None:
        """The rantext bound τ(ε) on cos(x, y); ``None`` when no similarity bound applies."""
        if self.candidates_rule != "rantext" or math.isinf(self.epsilon):
            return None
        tau = 1.0 - 2 * self.sensitivity * self.rantext_gap / self.epsilon
        return tau if tau > -1.0 else None  # every cosine is ≥ -1: the whole vocabulary

    @property
    def name(self) -> str:
        """The candidate rule in effect: ``full``, ``custext-top{k}``, ``rantext-cos≥τ`` (or ``rantext=full``)."""
        if self.top_k is not None:
            return f"custext-top{self.top_k}"
        tau = self.min_similarity
        if tau is None:
            return "rantext=full" if self.candidates_rule == "rantext" else "full"
        return f"rantext-cos≥{tau:.2f}"

    @property
    def guarantee(self) -> str:
        if math.isinf(self.epsilon):
            return "none: ε = ∞ releases every private token unchanged"
        if self.top_k is not None:
            return (
                f"{self.epsilon:g}-DP per token only between tokens with the same top-{self.top_k} candidate set; "
                "tokens with different candidate sets can be told apart"
            )
        tau = self.min_similarity
        if tau is None:
            whole = " (rantext's bound admits every token at this ε)" if self.candidates_rule == "rantext" else ""
            return f"{self.epsilon:g}-DP per token between any two tokens (full-vocabulary candidate set){whole}"
        return (
            f"{self.epsilon:g}-DP per token only between tokens with the same candidate set "
            f"(rantext: cosine ≥ {tau:.2f} to the input); tokens with different candidate sets can be told apart"
        )

    def __repr__(self) -> str:
        k = "full" if self.top_k is None else self.top_k
        if self.min_similarity is not None:
            k = f"cos≥{self.min_similarity:.2f}"
        return (
            f"ExponentialMechanism(V={self.vocab_size}, d={self._unit.shape[1]}, ε={self.epsilon:g}, "
            f"candidates={k}, device={self.device})"
        )

    # ------------------------------------------------------------------ similarities
    def _check_ids(self, token_ids) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise FedLSMError(
                f"token id {bad} has no embedding in this mechanism (vocabulary size {self.vocab_size}) "
                "(fix: map unknown tokens to a fallback before calling the mechanism)"
            )
        return ids

    def similarity_rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``(n × V)`` of the given tokens with every token, clamped to [-1, 1].

        Callers chunk ``token_ids``; the result is dense.
        """
        ids = token_ids.to(self.device)
        return (self._unit[ids] @ self._unit.T).clamp_(-1.0, 1.0)

    def row_logits(self, token_ids: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``ε·u(x, ·)/(2Δu)`` for the given tokens over the whole vocabulary, ``-inf`` outside ``C(x)``
        (full and rantext rules)."""
        ids = token_ids.to(self.device)
        sims = self.similarity_rows(ids)
        logits = sims.to(dtype) * self.scale
        logits[:, ~self._allowed] = -math.inf
        tau = self.min_similarity
        if tau is not None:
            outside = sims < tau
            outside[torch.arange(ids.numel(), device=self.device), ids] = False  # x ∈ C(x) always
            logits[outside & self._allowed] = -math.inf
            if bool(torch.isinf(logits).all(1).any()):
                raise FedLSMError(
                    "a token has no output candidate within the rantext bound (it is itself an excluded output) "
                    "(fix: raise privacy.rantext_gap or use privacy.mechanism=full)"
                )
        return logits

    def candidates(self, token_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, similarities)``, each ``n × k``, of the top-k candidate sets of the given tokens."""
        if self._table is None:
            raise FedLSMError("candidates() needs a top-k mechanism; this one samples from the full vocabulary")
        ids = self._check_ids(token_ids).to(self.device).reshape(-1)
        return self._table.lookup(ids)

    # ------------------------------------------------------------------ exact distribution
    def log_probabilities(self, token_ids) -> torch.Tensor:
        """Exact ``log Pr[M(x) = y]`` as an ``n × V`` float64 tensor (``-inf`` outside ``C(x)``).

        Meant for audits and tests on a few tokens; it is dense in V.
        """
        ids = self._check_ids(token_ids).reshape(-1).to(self.device)
        n, v = ids.numel(), self.vocab_size
        out = torch.full((n, v), -math.inf, dtype=torch.float64, device=self.device)
        if math.isinf(self.epsilon):
            out[torch.arange(n, device=self.device), ids] = 0.0
            return out.cpu()
        if self._table is None:
            out = torch.log_softmax(self.row_logits(ids), dim=1)
        else:
            cand, sims = self._table.lookup(ids)
            out.scatter_(1, cand, torch.log_softmax(sims.double() * self.scale, dim=1))
        return out.cpu()

    def probabilities(self, token_id: int) -> torch.Tensor:
        """Exact output distribution ``Pr[M(x) = ·]`` of one token as a float64 tensor of length V."""
        return self.log_probabilities([int(token_id)])[0].exp()

    def log_normalizers(self, token_ids) -> torch.Tensor:
        """``log Z(x) = log Σ_{y ∈ C(x)} exp(ε·u(x, y)/(2Δu))`` for each given token (float64, on CPU).

        Costs one similarity row per token in full-vocabulary mode; the Bayesian attack needs it.
        """
        ids = self._check_ids(token_ids).reshape(-1).to(self.device)
        if math.isinf(self.epsilon):
            raise FedLSMError("log_normalizers() is undefined at ε = ∞")
        if self._table is not None:
            _, sims = self._table.lookup(ids)
            return torch.logsumexp(sims.double() * self.scale, dim=1).cpu()
        out = torch.empty(ids.numel(), dtype=torch.float64)
        chunks = range(0, ids.numel(), self.chunk_rows)
        from fedlsm.progress import progress_iter

        for s in progress_iter(chunks, "normalizers", enabled=self.show_progress and len(chunks) > 8):
            out[s : s + self.chunk_rows] = torch.logsumexp(self.row_logits(ids[s : s + self.chunk_rows]), 1).cpu()
        return out

    # ------------------------------------------------------------------ sampling
    def sample(self, token_ids, *, seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Perturb every token of ``token_ids`` (any shape) independently; returns the same shape.

        Without ``seed`` the draws come from the operating system's entropy source (:func:`os_entropy_seed`),
        so nobody who knows the run's configuration can predict them; pass ``seed`` (or a ``generator`` on
        the mechanism's device) only for reproducible draws in a simulation.
        """
        ids = self._check_ids(token_ids)
        shape, home = ids.shape, ids.device
        flat = ids.reshape(-1).to(self.device)
        if math.isinf(self.epsilon) or flat.numel() == 0:
            return ids.clone()
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(os_entropy_seed() if seed is None else int(seed))
        if self._table is not None:
            out = self._sample_topk(flat, generator)
        elif self.min_similarity is not None:
            out = self._sample_exact_rows(flat, generator)  # rejection from the whole vocabulary would waste most draws
        else:
            out = self._sample_full(flat, generator)
        return out.reshape(shape).to(home)

    def _sample_topk(self, xs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Inverse-CDF sampling: one float64 CDF per distinct token, one binary search per occurrence."""
        uniq, inv = torch.unique(xs, return_inverse=True)
        assert self._table is not None  # sample() calls this for a top-k mechanism only
        cand, sims = self._table.lookup(uniq)
        cdf = torch.cumsum(torch.softmax(sims.double() * self.scale, dim=1), dim=1)
        cdf /= cdf[:, -1:].clone()  # the last entry is exactly 1, so a uniform draw in [0, 1) always lands
        k = cand.shape[1]
        out = torch.empty_like(xs)
        step = max(1, _CHUNK_ELEMENTS // k)
        for s in range(0, xs.numel(), step):
            rows = inv[s : s + step]
            r = torch.rand((rows.numel(), 1), generator=gen, device=self.device, dtype=torch.float64)
            # right=True: the first entry > r, so zero-probability candidates are never picked
            col = torch.searchsorted(cdf[rows], r, right=True).squeeze(1)
            out[s : s + step] = cand[rows, col]
        return out

    def _sample_full(self, xs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Exact rejection sampling; exact similarity rows for tokens where that is cheaper.

        Proposal: uniform over the allowed outputs. Since u ≤ 1, accepting y with probability
        exp(scale·(u(x, y) - 1)) ≤ 1 makes an accepted value an exact draw from Pr[M(x) = ·].
        After each round, a token whose expected remaining rejection work (count / acceptance
        rate proposals) costs more than one similarity row is drawn from its exact row instead;
        that is a fresh exact draw, so the mixture stays exact. The schedule depends only on
        acceptance counts, never on accepted values, so it does not bias the outputs.
        """
        out = torch.empty_like(xs)
        pending = torch.arange(xs.numel(), device=self.device)
        n_allowed, d = self._allowed_ids.numel(), self._unit.shape[1]
        # Gathered embedding rows go into one small reused buffer: chunks that stay in the CPU's
        # cache, and no fresh multi-MB tensors whose page faults would dominate.
        chunk, cost = _per_device(_PROPOSALS_PER_CHUNK, self.device), _per_device(_PROPOSAL_COST, self.device)
        buf = torch.empty((max(chunk, _MAX_PROPOSALS_PER_ROUND), d), device=self.device)
        x_buf = torch.empty((chunk, d), device=self.device)
        to_exact: list[torch.Tensor] = []
        m = 2
        for _ in range(_MAX_ROUNDS):
            still, proposed, accepted = [], 0, 0
            group = max(1, _ROUND_ELEMENTS // m)  # tokens per group: bounds the round's index tensors
            for g in range(0, pending.numel(), group):
                idx = pending[g : g + group]
                n = idx.numel()
                props = self._allowed_ids[torch.randint(n_allowed, (n, m), generator=gen, device=self.device)]
                x_ids = xs[idx]
                cos = torch.empty((n, m), device=self.device)
                step = max(1, chunk // m)
                for s in range(0, n, step):
                    c = min(step, n - s)
                    rows = torch.index_select(self._unit, 0, props[s : s + c].reshape(-1), out=buf[: c * m]).view(
                        c, m, d
                    )
                    rows.mul_(torch.index_select(self._unit, 0, x_ids[s : s + c], out=x_buf[:c]).unsqueeze(1))
                    torch.sum(rows, 2, out=cos[s : s + c])
                cos.clamp_(-1.0, 1.0)
                hit = torch.rand((n, m), generator=gen, device=self.device) < torch.exp((cos - 1.0) * self.scale)
                got = hit.any(1)
                first = hit.to(torch.uint8).argmax(1)  # argmax returns the first maximal index
                out[idx[got]] = props[got, first[got]]
                still.append(idx[~got])
                accepted += int(got.sum())
                proposed += hit.numel()
            pending = torch.cat(still)
            if not pending.numel():
                break
            # Acceptance rate of this round: the tokens left are the hard ones, so older rounds
            # would be too optimistic. With no acceptance at all, 1/proposed is an upper bound.
            rate = max(accepted, 1) / proposed
            _, inv, counts = torch.unique(xs[pending], return_inverse=True, return_counts=True)
            exact = (counts.double() * (cost / rate) > n_allowed)[inv]
            to_exact.append(pending[exact])
            pending = pending[~exact]
            if not pending.numel():
                break
            # Every proposal of a round is evaluated, even after an earlier one was accepted, so few
            # proposals per round waste least: m/(1-(1-rate)^m) evaluations per token, near 1/rate.
            m = int(min(_MAX_PROPOSALS_PER_ROUND, max(1, math.ceil(0.5 / rate))))
        to_exact.append(pending)
        exact_idx = torch.cat(to_exact)
        if exact_idx.numel():
            out[exact_idx] = self._sample_exact_rows(xs[exact_idx], gen)
        return out

    def _sample_exact_rows(self, xs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Exact sampling from full similarity rows, one row per unique token."""
        uniq, inv, counts = torch.unique(xs, return_inverse=True, return_counts=True)
        counts_sorted, order = counts.sort(descending=True)  # sorted position -> unique index
        pos = torch.empty_like(order)
        pos[order] = torch.arange(order.numel(), device=order.device)
        key = pos[inv]  # each occurrence's sorted position
        occ = torch.argsort(key, stable=True)  # occurrences grouped by sorted position
        starts = torch.cumsum(counts_sorted, 0) - counts_sorted
        rank = torch.arange(xs.numel(), device=xs.device) - starts[key[occ]]  # index within its group
        out = torch.empty_like(xs)
        s, u = 0, uniq.numel()
        row_cap = max(1, _CHUNK_ELEMENTS // self.vocab_size)
        while s < u:
            # The first group of a chunk is its largest: bound rows × draws per row.
            rows = max(1, min(row_cap, _CHUNK_ELEMENTS // int(counts_sorted[s])))
            e = min(u, s + rows)
            draws = torch.multinomial(
                torch.softmax(self.row_logits(uniq[order[s:e]], torch.float32), dim=1),
                int(counts_sorted[s]),
                replacement=True,
                generator=gen,
            )
            a, b = int(starts[s]), int(starts[e - 1] + counts_sorted[e - 1])
            sel = occ[a:b]
            out[sel] = draws[key[sel] - s, rank[a:b]]
            s = e
        return out


def _check_rule(candidates: str | None, top_k: int | None, gap: float) -> str:
    """The candidate rule, checked against the parameters that go with it."""
    rule = candidates if candidates is not None else ("custext" if top_k is not None else "full")
    if rule not in MECHANISMS:
        raise ConfigError("privacy.mechanism", f"must be one of {', '.join(MECHANISMS)}, got {rule!r}")
    if rule == "custext" and top_k is None:
        raise ConfigError("privacy.top_k", "is needed by the custext mechanism", "set privacy.top_k, e.g. 20")
    if rule != "custext" and top_k is not None:
        raise ConfigError("privacy.top_k", f"applies to the custext mechanism only, not {rule}", "drop top_k")
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or gap <= 0:
        raise ConfigError("privacy.rantext_gap", f"must be a finite number > 0, got {gap!r}", "use e.g. 1.0")
    return rule


class _CandidateTable:
    """Lazily filled top-k candidate sets: ``V × k`` ids and similarities, one row per input token.

    Each token's own id is forced into its candidate set (first place) so that no input is
    excluded from its own outputs by ties among duplicate embeddings.
    """

    def __init__(self, mech: ExponentialMechanism):
        self.mech = mech
        assert mech.top_k is not None  # only a top-k mechanism has a candidate table
        self.k: int = mech.top_k
        v, k, dev = mech.vocab_size, self.k, mech.device
        self.ids = torch.zeros((v, k), dtype=torch.long, device=dev)
        self.sims = torch.zeros((v, k), dtype=torch.float32, device=dev)
        self.ready = torch.zeros(v, dtype=torch.bool, device=dev)

    def lookup(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.ensure(ids)
        return self.ids[ids], self.sims[ids]

    def ensure(self, ids: torch.Tensor) -> None:
        missing = torch.unique(ids)
        missing = missing[~self.ready[missing]]
        for s in range(0, missing.numel(), self.mech.chunk_rows):
            rows = missing[s : s + self.mech.chunk_rows]
            sims = self.mech.similarity_rows(rows)
            self._store(rows, sims)

    def _store(self, rows: torch.Tensor, sims: torch.Tensor) -> None:
        mech, k = self.mech, self.k
        sims = sims.masked_fill(~mech._allowed, -math.inf)
        r = torch.arange(rows.numel(), device=rows.device)
        own = mech._allowed[rows]
        sims[r[own], rows[own]] = 2.0  # above any cosine: the token itself always comes first
        vals, idx = sims.topk(k, dim=1)
        self.ids[rows] = idx
        self.sims[rows] = vals.clamp_(max=1.0)
        self.ready[rows] = True

    def fill_all(self) -> None:
        """Fill every row not filled yet; exploits symmetry of the cosine matrix to halve the work.

        The vocabulary is split into blocks; each block pair (i ≤ j) is multiplied once and
        feeds the running top-k of the rows of block i and (transposed) of block j.
        """
        from fedlsm.progress import progress_iter

        mech, k, v = self.mech, self.k, self.mech.vocab_size
        unit, allowed = mech._unit, mech._allowed
        b = 4096  # a block of similarities is b × b floats (64 MB): large blocks, few small operations
        blocks = [(s, min(v, s + b)) for s in range(0, v, b)]
        best_v = torch.full((v, k), -math.inf, device=mech.device)
        best_i = torch.zeros((v, k), dtype=torch.long, device=mech.device)

        def merge(lo: int, hi: int, sims: torch.Tensor, col_lo: int, col_allowed: torch.Tensor) -> None:
            if not bool(col_allowed.all()):  # only blocks holding excluded outputs pay for a masked copy
                sims = sims.masked_fill(~col_allowed, -math.inf)
            nv, ni = sims.topk(min(k, sims.shape[1]), dim=1)
            tv, ti = torch.cat([best_v[lo:hi], nv], 1).topk(k, dim=1)
            best_v[lo:hi], best_i[lo:hi] = tv, torch.cat([best_i[lo:hi], ni + col_lo], 1).gather(1, ti)

        pairs = [(i, j) for i in range(len(blocks)) for j in range(i, len(blocks))]
        for i, j in progress_iter(pairs, f"top-{k} candidates", enabled=mech.show_progress):
            (a0, a1), (b0, b1) = blocks[i], blocks[j]
            sims = unit[a0:a1] @ unit[b0:b1].T  # clamped to [-1, 1] at the end; order is unaffected
            if i == j:
                d = torch.arange(a1 - a0, device=mech.device)
                own = allowed[a0:a1]
                sims[d[own], d[own]] = 2.0  # the token itself first, as in _store
            merge(a0, a1, sims, b0, allowed[b0:b1])
            if i != j:
                merge(b0, b1, sims.T, a0, allowed[a0:a1])
        # Rows already handed out lazily keep their candidates: a token's candidate set must not
        # change during a run (ties at the k-th place may resolve differently between the paths).
        fresh = ~self.ready
        self.ids[fresh] = best_i[fresh]
        self.sims[fresh] = best_v[fresh].clamp_(max=1.0)
        self.ready.fill_(True)
