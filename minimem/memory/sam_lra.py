"""The least-recently-accessed (LRA) order of Sparse Access Memory (Rae et al. 2016, arXiv:1610.09027,
section 3.3 and Supplementary A.3; spec specs/ntm_dnc_sam.md C.3 steps 3 and 8, C.11): which slot
the next write erases, in amortised O(1) per step instead of an argmin over N.

Shapes: B batch, N slots, J slots accessed at one step (<= 2 R K + 1 per element).

The rule (C.3 step 3, minimem's tie-breaking C.12.6):

    l_t = argmin_j last_{t-1}(j), ties to the lowest index j

where last(j) is the time of the last access of slot j above delta. The paper keeps the words in
an "LRA ring", a list in access order whose head is the LRA word; an access moves the word to the
back. LRAOrder is that ring as a first-in-first-out queue with lazy deletion, per batch element:

- At construction every slot enters once, in the order of (last(j), j): one stable argsort of
  `last` (O(N log N), once; a fresh memory with last = 0 needs no sort at all).
- An access at time t appends the accessed slots at the back in ascending slot order (the order
  the argmin rule breaks ties in), each tagged with t. The slot's older entry is not searched for
  and removed: it becomes stale, because last(j) no longer equals the time it carries.
- The head is the first entry that is not stale. Stale entries at the front are skipped once and
  never seen again (the head only moves forward), so the cost is amortised O(1) per access.

Why it equals the argmin: the queue is sorted by (time, slot) - the initial part by the sort, each
appended block carries a time later than everything before it (t > every last(j) of the state it
was built from) and lists its slots ascending - and every slot has exactly one live entry, tagged
with last(j). So the first live entry is the minimum of (last(j), j) over all slots: the argmin
with ties to the lowest index. tests/test_sam_lra.py checks this against lra_slots at every step.

Nothing here is differentiated (the LRA slot is a constant of the backward pass, C.4). The queue
reads `last` to tell live entries from stale ones; the caller updates `last` (usage_update) and
tells the queue which slots it stamped (touch). DAM's discounted usage U^(1) changes every slot's
value at every step, so it keeps the argmin (lra_slots).

For small N the queue's bookkeeping costs more than the argmin it saves: an argmin over (B, N)
times is one NumPy call, while the queue runs several per step and, when a step touches most
slots, skips many stale entries. lra_order(last, t) therefore returns an ArgminOrder (the same
interface, lra_slots inside) for N <= ARGMIN_MAX_N and the queue above that.
"""

from __future__ import annotations

import numpy as np

from minimem.memory.sam_sparse import INDEX_DTYPE, lra_slots

_WINDOW = 8          # queue entries examined per element and round while looking for the head
ARGMIN_MAX_N = 1024  # up to this many slots lra_order answers with an argmin (faster there; measured
                     # 2-7x less per step than the queue at B = 1 and 16 for N <= 1024; near even at 4096)


def _check_last(last: np.ndarray, t: int) -> np.ndarray:
    last = np.asarray(last)
    if last.ndim != 2 or last.dtype.kind not in "iu":
        raise ValueError(f"last must be an integer array of shape (B, N); got {last.dtype} {last.shape}")
    if last.size and last.max() > t:
        raise ValueError(f"last must hold times <= t = {t}; got {last.max()}")
    return last


def lra_order(last: np.ndarray, t: int) -> "LRAOrder | ArgminOrder":
    """The LRA order for access times last (B, N) at time t: an ArgminOrder for N <= ARGMIN_MAX_N,
    else the LRAOrder queue. Both answer head(last) == lra_slots(last)."""
    last = _check_last(last, t)
    return ArgminOrder(last, t) if last.shape[1] <= ARGMIN_MAX_N else LRAOrder(last, t)


class ArgminOrder:
    """The LRA rule as a plain argmin over `last` (lra_slots, O(N) per step), with LRAOrder's
    interface: head(last), touch(rows, t) (nothing to do) and fork(). Holds no state but the shape."""

    def __init__(self, last: np.ndarray, t: int):
        self.B, self.N = _check_last(last, t).shape

    def fork(self) -> "ArgminOrder":
        return self                                           # nothing in it changes

    def head(self, last: np.ndarray) -> np.ndarray:
        """(B,) int: argmin_j last(j), ties to the lowest j."""
        if last.shape != (self.B, self.N):
            raise ValueError(f"last must have shape (B, N) = {(self.B, self.N)}; got {last.shape}")
        return lra_slots(last)

    def touch(self, rows: np.ndarray, t: int) -> None:
        """Nothing: the argmin reads the times the caller stamped into `last`."""


class LRAOrder:
    """The LRA ring of every batch element as a lazy-deletion queue (module docstring).

        order = LRAOrder(last, t)          # last (B, N) int times <= t, t the state's time
        l = order.head(last)               # (B,) == lra_slots(last), amortised O(1)
        last.reshape(-1)[rows] = t + 1     # usage_update stamps the accessed slots ...
        order.touch(rows, t + 1)           # ... and the queue appends them (global rows b N + j)

    Args:
        last: (B, N) int, the time of the last access of each slot (read, not kept).
        t: the time of the state `last` belongs to (every later access is stamped > t).
    """

    def __init__(self, last: np.ndarray, t: int):
        last = _check_last(last, t)
        B, N = last.shape
        self.B, self.N, self.t_build = B, N, int(t)
        if not last.any():                                    # a fresh memory: slot order, no sort
            self.base = np.broadcast_to(np.arange(N, dtype=INDEX_DTYPE), (B, N))
        else:
            self.base = np.argsort(last, axis=-1, kind="stable").astype(INDEX_DTYPE)   # (B, N) by (last, j)
        self.base_head = np.zeros(B, dtype=INDEX_DTYPE)       # first possibly live entry of the base
        self.log = np.full((B, 64), -1, dtype=INDEX_DTYPE)    # appended slots, -1 = padding
        self.log_time = np.zeros(64, dtype=INDEX_DTYPE)       # the time of every appended column
        self.log_head = np.zeros(B, dtype=INDEX_DTYPE)
        self.log_tail = 0

    def fork(self) -> "LRAOrder":
        """An independent copy: the sorted base is shared (never written), the appended part copied."""
        twin = object.__new__(LRAOrder)
        twin.__dict__.update(self.__dict__)
        twin.base_head, twin.log_head = self.base_head.copy(), self.log_head.copy()
        twin.log, twin.log_time = self.log[:, :self.log_tail].copy(), self.log_time[:self.log_tail].copy()
        return twin

    def head(self, last: np.ndarray) -> np.ndarray:
        """(B,) int: the LRA slot of every element, argmin_j last(j) with ties to the lowest j."""
        if last.shape != (self.B, self.N):
            raise ValueError(f"last must have shape (B, N) = {(self.B, self.N)}; got {last.shape}")
        fast = self._head_fast(last)
        if fast is not None:
            return fast
        out = np.full(self.B, -1, dtype=INDEX_DTYPE)
        todo = np.arange(self.B)
        # the initial part: an entry is live while its slot has not been accessed since construction
        todo = self._scan(last, todo, out, self.base, self.base_head, self.N,
                          lambda b, slots, position: last[b[:, None], slots] <= self.t_build)
        if todo.size:
            # the appended part: an entry is live when its slot's last access is the entry's time
            self._scan(last, todo, out, self.log, self.log_head, self.log_tail,
                       lambda b, slots, position: (slots >= 0) & (
                           last[b[:, None], np.maximum(slots, 0)] == self.log_time[position]))
        if np.any(out < 0):
            raise RuntimeError("the LRA queue lost a slot (last was changed without touch)")
        return out

    def _head_fast(self, last: np.ndarray) -> np.ndarray | None:
        """The usual step, in a few array operations: every element has a live entry among the
        _WINDOW entries from its head, all elements in the same part of the queue. Returns the
        slots (moving the heads as _scan does), or None (nothing changed) for the general scan."""
        window, elements = _WINDOW, np.arange(self.B)[:, None]          # elements (B, 1)
        if int(self.base_head.max()) + window <= self.N:                    # all in the initial part
            head = self.base_head
            position = head[:, None] + np.arange(window)                     # (B, window)
            slots = self.base[elements, position]
            ok = last[elements, slots] <= self.t_build
        elif int(self.base_head.min()) >= self.N and int(self.log_head.max()) + window <= self.log_tail:
            head = self.log_head
            position = head[:, None] + np.arange(window)
            slots = self.log[elements, position]
            ok = (slots >= 0) & (last[elements, np.maximum(slots, 0)] == self.log_time[position])
        else:
            return None
        elements, first = elements[:, 0], ok.argmax(axis=1)                 # the first live entry
        if not ok[elements, first].all():
            return None
        head[:] = position[elements, first]                                  # stale entries skipped for good
        return slots[elements, first]

    @staticmethod
    def _scan(last, todo, out, queue, head, end, live) -> np.ndarray:
        """Move head[b] to the first live entry of queue[b, :end] for the elements in todo; write its
        slot to out[b]. Returns the elements whose part of the queue holds no live entry."""
        window = _WINDOW
        while todo.size:
            position = head[todo][:, None] + np.arange(window)                  # (len(todo), window)
            inside = position < end
            clipped = np.minimum(position, max(end - 1, 0))
            slots = queue[todo[:, None], clipped] if end else np.full(position.shape, -1, INDEX_DTYPE)
            ok = inside & live(todo, slots, clipped)
            found = ok.any(axis=1)
            first = np.argmax(ok, axis=1)
            hit = todo[found]
            head[hit] = position[found, first[found]]                           # stale entries skipped for good
            out[hit] = slots[found, first[found]]
            missed = todo[~found]
            head[missed] = np.minimum(head[missed] + window, end)
            todo = missed[head[missed] < end]
            window *= 2                                                        # long stale runs: fewer rounds
        return np.flatnonzero(out < 0)

    def touch(self, rows: np.ndarray, t: int) -> None:
        """Append the slots accessed at time t (global rows b N + j, ascending, unique) at the back."""
        rows = np.asarray(rows, dtype=INDEX_DTYPE)
        if rows.size == 0:
            return
        if self.B == 1:                                                         # one element: the slots as they are
            self._reserve(rows.size)
            self.log[0, self.log_tail:self.log_tail + rows.size] = rows
            self.log_time[self.log_tail:self.log_tail + rows.size] = t
            self.log_tail += rows.size
            return
        b, slot = np.divmod(rows, self.N)                                       # grouped by b, slots ascending
        counts = np.bincount(b, minlength=self.B)
        width = int(counts.max())
        block = np.full((self.B, width), -1, dtype=INDEX_DTYPE)
        block[b, np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)] = slot
        self._reserve(width)
        self.log[:, self.log_tail:self.log_tail + width] = block
        self.log_time[self.log_tail:self.log_tail + width] = t
        self.log_tail += width

    def _reserve(self, width: int) -> None:
        """Room for `width` more columns: keep only the columns some element has not passed yet (an
        element still in the initial part has passed none), in a buffer twice the size needed."""
        if self.log_tail + width <= self.log.shape[1]:
            return
        done = int(self.log_head.min())
        used = self.log_tail - done
        size = max(64, 2 * (used + width))
        log = np.full((self.B, size), -1, dtype=INDEX_DTYPE)
        log_time = np.zeros(size, dtype=INDEX_DTYPE)
        log[:, :used], log_time[:used] = self.log[:, done:self.log_tail], self.log_time[done:self.log_tail]
        self.log, self.log_time = log, log_time
        self.log_head -= done
        self.log_tail = used
