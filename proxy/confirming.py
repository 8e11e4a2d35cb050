"""Statements of the requests in flight awaiting PostgreSQL's word, by position in their request; pure.

A statement is matched with its answer as sessionstate.py matches them: the k-th CommandComplete of a request
answers its k-th statement (a Query string's statements, an extended batch's Executes); an ErrorResponse fails the
statement it answers and every later one of its request; a request that ends with statements unanswered never ran
them (skipped after an error earlier in its batch)."""

from __future__ import annotations


class Awaiting:
    """Tokens of statements sent and not yet answered, per request (identity), oldest first."""

    __slots__ = ("requests",)

    def __init__(self) -> None:
        self.requests: dict[object, list[tuple[int, object]]] = {}

    def sent(self, request: object, position: int, token: object) -> None:
        """Statement `position` of `request` (the newest in flight) carries `token`."""
        self.requests.setdefault(request, []).append((position, token))

    def completed(self, request: object, done: int) -> list[object]:
        """The `done`-th CommandComplete of `request` (the head of the pipeline): the tokens it confirms."""
        waiting = self.requests.get(request)
        out: list[object] = []
        while waiting and waiting[0][0] < done:
            out.append(waiting.pop(0)[1])
        if waiting is not None and not waiting:
            del self.requests[request]
        return out

    def failed(self, request: object) -> list[object]:
        """An ErrorResponse to `request`: the tokens of its statements not confirmed yet (none of them runs)."""
        return [token for _, token in self.requests.pop(request, ())]

    def ready(self, pending: object) -> list[object]:
        """ReadyForQuery: the tokens of requests no longer in `pending` never answered (never run)."""
        out: list[object] = []
        for request in [r for r in self.requests if r not in pending]:  # type: ignore[operator]
            out += [token for _, token in self.requests.pop(request)]
        return out
