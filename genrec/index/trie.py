"""A prefix trie over token-id sequences, stored as flat arrays (CSR) so a decoder can turn a
batch of trie states into masks with tensor operations.

Node 0 is the root. ``child_ptr[n]:child_ptr[n+1]`` indexes the children of node n in
``child_token`` (the token on the edge, sorted) and ``child_node``. ``item[n]`` is the item
whose sequence ends at node n, or -1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Trie:
    def __init__(self, sequences: Sequence[Sequence[int]]):
        children: list[dict[int, int]] = [{}]
        item = [-1]
        for i, seq in enumerate(sequences):
            if len(seq) == 0:
                raise ValueError(f"item {i}: empty token sequence")
            node = 0
            for tok in seq:
                nxt = children[node].get(int(tok))
                if nxt is None:
                    nxt = len(children)
                    children[node][int(tok)] = nxt
                    children.append({})
                    item.append(-1)
                node = nxt
            if item[node] != -1:
                raise ValueError(f"items {item[node]} and {i} have the same token sequence {list(seq)}")
            if children[node]:
                raise ValueError(f"item {i}: its sequence is a prefix of another item's; add an end token")
            item[node] = i
        for node, ch in enumerate(children):
            if ch and item[node] != -1:
                raise ValueError(f"item {item[node]}: its sequence is a prefix of another item's; add an end token")
        counts = np.array([len(c) for c in children], dtype=np.int64)
        self.child_ptr = np.concatenate([[0], np.cumsum(counts)])
        self.child_token = np.empty(int(counts.sum()), dtype=np.int64)
        self.child_node = np.empty(int(counts.sum()), dtype=np.int64)
        for node, ch in enumerate(children):
            toks = sorted(ch)
            s = self.child_ptr[node]
            self.child_token[s : s + len(toks)] = toks
            self.child_node[s : s + len(toks)] = [ch[t] for t in toks]
        self.item = np.asarray(item, dtype=np.int64)
        self.n_items = len(sequences)
        self.max_depth = max(len(s) for s in sequences) if len(sequences) else 0

    @property
    def n_nodes(self) -> int:
        return len(self.item)

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.child_ptr[node], self.child_ptr[node + 1]
        return self.child_token[s:e], self.child_node[s:e]

    def step(self, node: int, token: int) -> int:
        """The node reached from ``node`` by ``token``, or -1 when the token is not allowed."""
        toks, nodes = self.children(node)
        j = np.searchsorted(toks, token)
        return int(nodes[j]) if j < len(toks) and toks[j] == token else -1

    def walk(self, prefix: Sequence[int]) -> int:
        node = 0
        for tok in prefix:
            node = self.step(node, int(tok))
            if node < 0:
                return -1
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (empty when the prefix is complete or invalid)."""
        node = self.walk(prefix)
        return [] if node < 0 else self.children(node)[0].tolist()

    def lookup(self, seq: Sequence[int]) -> int:
        """The item whose sequence is exactly ``seq``, or -1."""
        node = self.walk(seq)
        return -1 if node < 0 else int(self.item[node])
