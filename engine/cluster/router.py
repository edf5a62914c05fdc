"""Ray Serve's request router for the engine replicas: a conversation's requests go to the replica
that holds its prefix (``routing.py``), unless that replica is full, then to the others."""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from autoglm.engine.cluster.routing import ranked


class PrefixAffinityRouter(RequestRouter):
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """Ranks, best first: the conversation's own replica if it has room, then the rest. A request
        without a conversation (an embedding, a health check) goes to the least loaded replicas."""
        key = pending_request.args[0] if pending_request is not None and pending_request.args else None
        if not isinstance(key, str) or len(candidate_replicas) < 2:
            return [self._least_loaded(candidate_replicas)]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = [by_id[i] for i in ranked(key, list(by_id))]
        if self.select_available_replicas(order[:1]):
            return [order[:1], self._least_loaded(order[1:])]
        return [self._least_loaded(order[1:]), order[:1]]  # full: another replica now beats its cache later

    def _least_loaded(self, replicas: list[RunningReplica]) -> list[RunningReplica]:
        """Those the queue-length cache knows, fewest ongoing requests first (unknown ones last)."""
        cache = self._replica_queue_len_cache

        def load(replica: RunningReplica) -> float:
            known = cache.get(replica.replica_id)
            return float("inf") if known is None else float(known)

        return sorted(replicas, key=load)
