"""Drafts for speculative decoding from the sequence itself (prompt lookup): no second model.

When the reply copies from its context (rewriting a text, extracting fields, editing code), the
tokens after the last few generated ones have usually appeared before: those that followed them
then are the draft. The scheduler verifies a draft inside the same batch as every other stream
and keeps the longest prefix that the model itself would have produced, so greedy text is
unchanged. Kept per slot: an index of n-grams -> where they last continued, grown as tokens come.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

NGRAMS = (4, 3)  # longest match first; a 2-gram ("of the") predicts too little to pay
MAX_K = 62  # a step of at most 63 rows per sequence: what llama.cpp's attention computes as plain decoding does
# From 64 query rows of one sequence, llama.cpp's CPU flash attention switches to its tiled path (GGML_FA_TILE_Q, F32
# GEMM over F32 keys where shorter steps take F16 dot products): greedy text then changes (tests/test_speculation.py's
# identity test fails at 63 drafts, passes at 62). Below that, longer steps are still cheaper per row on a 1.5B
# (AVX-512 EPYC, 2 cores: see docs/serving.md), and a recalled or copied reply is verified in fewer of them.
PROBE_K = 4  # the longest draft of a sequence none of whose drafts has been accepted yet
PROBE_P = 0.75  # ... judged as if this many drafted tokens were accepted: a probe must be affordable to learn
RUN_EVIDENCE = 8  # drafted tokens accepted in a row before that stretch counts as a copy of its own
PRIOR_ACCEPTED, PRIOR_REJECTED = 2.0, 1.0  # a new sequence's drafts: assumed two-thirds acceptable
PAUSE_TOKENS = 48  # not drafting for this long: forget what was learnt (the text may turn to copying)
PROBE_GAP = 8  # tokens before the next probe after one that found nothing; doubled per miss in a row ...
MAX_BACKOFF = 3  # ... up to 8x (64 tokens)
CANDIDATES = 8  # earlier occurrences of an n-gram kept: the draft follows the one that agrees furthest back
MATCH_CAP = 64  # tokens compared backwards; a longer agreement is no surer
MATCH_EVIDENCE = 12  # a match agreeing this far back is a copy in progress, sure as (L+1)/(L+2) per token
PRIOR_ROW_COST = 0.3  # an extra row's cost relative to a one-row step, until steps are measured
EXPLORE_ROW_COST = 0.05  # the same beyond the longest step measured so far: trying it is how it gets measured


Cost = float | Callable[[int], float]  # a step's time for n rows: a linear model's row cost, or measured


def step_time(cost: Cost, n: int) -> float:
    return cost(n) if callable(cost) else 1.0 + cost * n


def best_k(p: float, cost: Cost, limit: int, rows: int = 1) -> int:
    """The draft length that makes the step yield the most tokens per unit of time. The step
    already holds ``rows`` rows (one per running stream, drafts already added); ``k`` drafts each
    accepted with probability ``p`` (until the first miss) add ``p + ... + p^k`` tokens for the
    step's longer time, ``cost(rows + k)`` against ``cost(rows)``. Alone, an extra row must be
    likely; in a full batch it must be nearly certain, since it slows every stream's step."""
    best, best_rate = 0, rows / step_time(cost, rows)
    gain, term = float(rows), 1.0
    for k in range(1, min(limit, MAX_K) + 1):
        term *= p
        gain += term
        rate = gain / step_time(cost, rows + k)
        if rate > best_rate:
            best, best_rate = k, rate
    return best


class StepCost:
    """How long a decode step of n rows takes, measured as it runs (seconds, slowly averaged per
    row count). The curve is what matters, not a straight line through it: on a CPU the second
    row can cost much more than the tenth (kernels switch from vector to matrix code), so a linear
    fit through short drafts would forbid the long ones that pay. Row counts not seen yet are
    interpolated between measured ones, or extrapolated hopefully (so they get tried); a step far slower
    than its row count's average (another process took the cores) moves the average only a
    bounded amount, so one such step cannot switch drafting off."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.times: dict[int, float] = {}  # rows -> recent step time

    @property
    def plain(self) -> dict[int, float]:  # the rows without drafts are rows too
        return self.times

    def observe(self, rows: int, seconds: float, drafted: int = 0) -> None:
        known = self.times.get(rows)
        if known is None:
            self.times[rows] = seconds
        else:
            self.times[rows] = known + self.weight * (min(seconds, 3 * known) - known)

    def __call__(self, n: int) -> float:
        if n in self.times:
            return self.times[n]
        if not self.times:
            return 1.0 + PRIOR_ROW_COST * n
        below = max((k for k in self.times if k < n), default=None)
        above = min((k for k in self.times if k > n), default=None)
        if below is not None and above is not None:
            t0, t1 = self.times[below], self.times[above]
            return t0 + (t1 - t0) * (n - below) / (above - below)
        if below is not None:  # beyond what was measured: hopeful, so that longer drafts get tried and measured
            return self.times[below] + EXPLORE_ROW_COST * self.times[min(self.times)] * (n - below)
        assert above is not None  # times is not empty: one side of n holds a measurement
        return self.times[above]


PRIOR_CAP = 0.93  # a new sequence is never presumed surer: one rejected draft stops it where rows are dear
PRIOR_STRENGTH = 0.5  # the shared prior counts as half a rejection: one failed probe outweighs it


class Acceptance:
    """How often drafts were accepted across recent sequences: a new sequence starts from it (as
    much evidence as one rejection), not from a fixed guess. Where extra rows are dear (a small
    CPU) a fixed guess of two in three never drafts, so never learns that this workload copies."""

    DECAY = 0.98  # per observed draft: the last hundred or so count

    def __init__(self) -> None:
        self.accepted_w, self.rejected_w = PRIOR_ACCEPTED, PRIOR_REJECTED

    def observe(self, drafted: int, accepted: int) -> None:
        self.accepted_w = self.DECAY * self.accepted_w + accepted
        self.rejected_w = self.DECAY * self.rejected_w + (accepted < drafted)

    def prior(self) -> tuple[float, float]:
        p = min(self.accepted_w / (self.accepted_w + self.rejected_w), PRIOR_CAP)
        return p / (1 - p) * PRIOR_STRENGTH, PRIOR_STRENGTH


@dataclass
class Drafter:
    index: dict[tuple[int, ...], list[int]] = field(default_factory=dict)  # n-gram -> latest continuations
    indexed: int = 0  # tokens of the sequence whose n-grams (ending before the last) are indexed
    accepted_w: float = PRIOR_ACCEPTED  # accepted drafted tokens, with the prior
    rejected_w: float = PRIOR_REJECTED  # drafts that ended in a rejection, with the prior
    idle: int = 0  # tokens since the last draft
    prior: tuple[float, float] = (PRIOR_ACCEPTED, PRIOR_REJECTED)  # where a new or paused sequence starts
    proven: bool = False  # a draft of this sequence was accepted since it started or paused
    misses: int = 0  # probes in a row with nothing accepted
    probe_wait: int = 0  # tokens to go before an unproven sequence may probe again
    run: int = 0  # drafted tokens accepted since the last rejection: how long the current copy has held
    recalled: bool = False  # this step's draft came from the shared memory of earlier replies
    copied: bool = False  # ... or from ``ahead``
    ahead: list[int] = field(default_factory=list)  # what followed this very prompt last time (see ``expect``)
    ahead_from: int = 0  # where in the sequence ``ahead`` starts (the prompt's length)
    ahead_fragile: list[int] = field(default_factory=list)  # indices in ``ahead`` of near-tied tokens
    ahead_held: int = 0  # how many of ``ahead``'s tokens the reply has been checked to repeat
    strayed: bool = False  # the reply left ``ahead``: recalls are probes until one is accepted whole

    def reset(self, prior: tuple[float, float] | None = None) -> None:
        self.index.clear()
        self.indexed, self.idle = 0, 0
        self.prior = prior or (PRIOR_ACCEPTED, PRIOR_REJECTED)
        self.accepted_w, self.rejected_w = self.prior
        self.proven = False
        self.misses, self.probe_wait, self.run = 0, 0, 0
        self.ahead, self.ahead_from, self.ahead_fragile, self.strayed = [], 0, [], False

    def expect(self, continuation: list[int], start: int, fragile: Sequence[int] = ()) -> None:
        """The sequence's whole prompt was the start of what its slot held before: the tokens that
        followed it then are what a temperature-0 reply writes again (a regenerated answer, a
        request repeated). The slot's agreement is the whole prompt, so they are drafted as a copy
        of sure standing from the first draft on, not from the shared memory's 16-token keys at
        its own recent acceptance: on the 1.5B the first repeat of a code edit drafted 8, then 12,
        before 63 at a time. ``fragile``: the tokens of the earlier reply that nearly tied, where the new one
        may go another way: a draft stops at the next of them (a 63-token draft of a regenerated
        story was rejected after 10, costing a second)."""
        self.ahead, self.ahead_from, self.ahead_fragile = list(continuation), start, sorted(fragile)
        self.ahead_held = 0

    @property
    def p(self) -> float:
        """Per drafted token, the chance the model agrees (a truncated geometric's estimate)."""
        return self.accepted_w / (self.accepted_w + self.rejected_w)

    def _grow(self, tokens: list[int]) -> None:
        # n-grams ending at e (e < len - 1) map to e + 1, where their continuation starts
        for end in range(max(self.indexed - 1, 0), len(tokens) - 1):
            for n in NGRAMS:
                if end + 1 >= n:
                    starts = self.index.setdefault(tuple(tokens[end + 1 - n:end + 1]), [])
                    starts.append(end + 1)
                    if len(starts) > CANDIDATES:
                        del starts[0]
        self.indexed = len(tokens)

    def _tick(self) -> None:
        self.idle += 1
        self.probe_wait = max(self.probe_wait - 1, 0)
        if self.idle > PAUSE_TOKENS:
            (self.accepted_w, self.rejected_w), self.idle, self.proven, self.run = self.prior, 0, False, 0

    def _match(self, tokens: list[int]) -> tuple[int, int] | None:
        """Where the continuation of the sequence's end most likely starts, and how many tokens
        before it agree with the end. Code repeats short n-grams everywhere ("self.", "return "),
        so the latest occurrence is often the wrong one; the one that agrees furthest back is the
        passage being copied, and how far it agrees says how sure the copy is."""
        # a probe needs the longest n-gram: free text repeats three tokens ("one of the") far more
        # often than it copies, and each failed probe costs a step's worth of rows where rows are dear
        for n in NGRAMS if self.proven else NGRAMS[:1]:
            starts = self.index.get(tuple(tokens[-n:])) if len(tokens) > n else None
            if starts:
                agree = {s: _agreement(tokens, s) for s in starts}
                start = max(starts, key=lambda s: (agree[s], s))
                return start, agree[start]
        return None

    def _best(self, limit: int, row_cost: Cost, rows: int, agree: int = 0, floor: float = 0.0) -> int:
        # A match agreeing MATCH_EVIDENCE tokens back is a copy under way, evidence that needs no
        # accepted draft: on a first request, a 1.5B code edit probed 4 tokens at a time and ran at
        # plain speed for dozens of tokens while llama-server's ngram-mod drafted 48 at once.
        match = (agree + 1) / (agree + 2) if agree >= MATCH_EVIDENCE else 0.0
        if not self.proven and not match:  # nothing of this stretch accepted yet: short probes, so a miss costs little
            if self.probe_wait:
                return 0
            # at an estimate of its own, a sequence after free text (recent acceptance low) never probed,
            # so never learnt that it copies: 0% drafted on a 1.5B code edit after two chats; failed
            # probes stay rare through the backoff above
            return best_k(max(self.p, PROBE_P), row_cost, min(limit, PROBE_K), rows)
        # Misses come in clusters (where the reply departs from its source: the edited line, the end),
        # not one token in twenty throughout, so the stretch accepted since the last miss is evidence
        # of its own: 30 in a row say 0.97 where the whole sequence says 0.93, and on a 1.5B model on a
        # CPU only that pays for the 16-33 row steps where copying is fastest. A short stretch is not
        # (free text repeats "of the" now and then): below RUN_EVIDENCE it counts for nothing.
        run = (self.run + 1) / (self.run + 2) if self.run >= RUN_EVIDENCE else 0.0
        return best_k(max(self.p, run, match, floor), row_cost, limit, rows)

    def length(self, limit: int, row_cost: Cost = PRIOR_ROW_COST, rows: int = 1) -> int:
        """How many tokens to draft this step (0: none) at this acceptance rate and row cost."""
        self._tick()
        return self._best(limit, row_cost, rows)

    def draft(self, tokens: list[int], limit: int, row_cost: Cost = PRIOR_ROW_COST, rows: int = 1,
              memory: NgramMemory | None = None) -> list[int]:
        """The tokens that followed the sequence's end before: in earlier replies (``memory``: a
        reply asked for again, an edit of an edit), else earlier in this sequence, as many as pay
        at this acceptance rate and row cost, or none. The lookup comes first: most steps of free
        text find no match, and the draft length costs more to work out."""
        self._tick()
        self._grow(tokens)
        self.recalled = self.copied = False
        if self.ahead:
            done, held = len(tokens) - self.ahead_from, self.ahead_held  # (only the new tokens compared)
            if tokens[self.ahead_from + held:] == self.ahead[held:done] and done < len(self.ahead):
                self.ahead_held = done
                until = next((f + 1 for f in self.ahead_fragile if f >= done), len(self.ahead))
                want = self._best(min(limit, until - done), row_cost, rows, MATCH_CAP)
                self.copied = want > 0
                return self.ahead[done:done + want] if want > 0 else []
            # the reply went another way: the other sources from here on. The shared memory holds the
            # earlier reply too, and its 16-token keys recur in the new one without what came before
            # them: a regenerated story recalled 45 tokens there and the first was rejected
            self.ahead, self.strayed = [], True
        if memory is not None and (recalled := memory.follow(tokens, min(limit, MAX_K))):
            # judged by how often recalled drafts were accepted lately: a reply asked for again at
            # temperature 0 is recalled whole, and only drafts as long as llama.cpp's 48-64 keep up
            self.recalled = True
            sure = (0, 0.0) if self.strayed else (memory.n, memory.p)
            return recalled[:self._best(limit, row_cost, rows, *sure)]
        found = self._match(tokens)
        if found is None:
            return []
        start, agree = found
        want = self._best(limit, row_cost, rows, agree)
        return tokens[start:start + want] if want > 0 else []

    def observe(self, drafted: int, accepted: int) -> None:
        """A verified draft of this sequence's own lookup. Recalled and copied drafts are judged by
        evidence of their own (the memory's rate, the earlier reply's near-ties) and do not count:
        after a regenerated explanation's copied drafts were all accepted, its estimate of 0.96 sent
        a 35-token draft of its own lookup, and none was accepted."""
        self.idle = 0
        if self.recalled and accepted == drafted:
            self.strayed = False  # back on an earlier reply's text: its recalls are sure again
        if self.recalled or self.copied:
            return
        self.misses = self.misses + 1 if accepted == 0 else 0
        if self.misses and not self.proven:
            # free text repeats four tokens now and then without copying: a sequence whose probes keep
            # finding nothing waits longer before each next one, so its failed probes stay rare
            self.probe_wait = PROBE_GAP << min(self.misses - 1, MAX_BACKOFF)
        self.proven = self.proven or accepted > 0
        self.run = self.run + accepted if accepted == drafted else 0
        self.accepted_w += accepted
        self.rejected_w += accepted < drafted


def _agreement(tokens: list[int], start: int) -> int:
    """How many tokens before ``start`` equal the sequence's last ones (at most MATCH_CAP)."""
    n, end = 0, len(tokens)
    while n < MATCH_CAP and n < start and tokens[start - 1 - n] == tokens[end - 1 - n]:
        n += 1
    return n


MEMORY_N = 16  # tokens of context a recalled continuation must follow: shorter ones recur in unrelated text
MEMORY_CAPACITY = 1 << 20  # entries (about 100 MB at most); when full it starts over, as llama.cpp's does


class NgramMemory:
    """What followed each MEMORY_N tokens in recent replies, shared by every sequence of the
    server: a regenerated answer, or a second edit of code whose first edit the model wrote, is
    then drafted from the first reply at once (llama-server's ngram-mod keeps such a table too).
    Keys are the n-grams' hashes, not the n-grams, to bound the memory; a collision only costs a
    draft that verification rejects. Written by hand: no library keeps a bounded n-gram table
    for a decoding loop."""

    def __init__(self, n: int = MEMORY_N, capacity: int = MEMORY_CAPACITY) -> None:
        self.n, self.capacity = n, capacity
        self.next: dict[int, int] = {}
        self.accepted_w, self.rejected_w = float(n), 1.0  # a recall follows n agreeing tokens: as sure as that

    @property
    def p(self) -> float:
        """Per recalled token, the chance the model agrees, from recent recalls (decaying)."""
        return self.accepted_w / (self.accepted_w + self.rejected_w)

    def observe(self, drafted: int, accepted: int) -> None:
        self.accepted_w = Acceptance.DECAY * self.accepted_w + accepted
        self.rejected_w = Acceptance.DECAY * self.rejected_w + (accepted < drafted)

    def add(self, tokens: list[int], fragile: Collection[int] = ()) -> None:
        """``fragile``: indices of tokens that nearly tied when written (StepPlanner.accept). They are
        not kept (and forget what followed the same n-gram before), so a recall stops before each
        and the model decides it again: a regenerated story's recall of 45 tokens went another way
        at its first, a near-tie of the earlier reply."""
        if len(self.next) + len(tokens) > self.capacity:
            self.next.clear()
        for end in range(self.n, len(tokens)):
            key = hash(tuple(tokens[end - self.n:end]))
            if end in fragile:
                self.next.pop(key, None)
            else:
                self.next[key] = tokens[end]

    def follow(self, tokens: list[int], limit: int) -> list[int]:
        if len(tokens) < self.n or not self.next:
            return []
        window, out = list(tokens[-self.n:]), list[int]()
        while len(out) < limit and (token := self.next.get(hash(tuple(window)))) is not None:
            out.append(token)
            window = window[1:] + [token]
        return out
