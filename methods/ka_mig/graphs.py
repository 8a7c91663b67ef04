"""KA-MIG's three token knowledge graphs, built from the training set's token maps.

Nodes are the K image codes. Following the official KA-MIG graph notebooks and shipped files
(reference note ka_mig.md section 2):

- **co-occurrence G_co**: count[a, b] += 1 for every in-bounds 8-neighbour b of a on each h x w
  token grid (symmetric, diagonal included); then zero the diagonal, keep per row the top
  max(1, int(nnz_row * ratio)) counts (ratio 0.05 matches the shipped graph; the notebook shows
  0.01), add self loops of weight 1 and normalise w * deg^-1/2[row] * deg^-1/2[col] with
  deg = the *unweighted* number of out-edges (self loop included);
- **semantic similarity G_s**: per token, a distribution over the N positions
  (:func:`position_distributions`: the notebook's min-max per row then softmax by default, the
  paper's counts / sum as an option); Jensen-Shannon divergence between tokens; each token keeps
  its 2 nearest tokens (diagonal excluded) as directed edges i -> j weighted exp(-5 JS); same
  normalisation;
- **class-position incompatibility G_p**: for each class c and position i, the tokens never
  seen there in class c (no construction code is released; this is the paper's definition).

On 1-D tokens (TiTok's) G_co counts the pairs at most ``window`` places apart in the sequence
(:func:`sequence_cooccurrence_counts`; ``window`` 2, so offsets -2, -1, 1 and 2): our choice, since
the paper reports TiTok rows but KA-MIG published no graph code for 1-D tokens. TiTok's tokens are
not a raster (each latent token attends to the whole image), so sequence neighbours are not image
neighbours; nearby tokens still co-occur more than distant ones (the attention's position
embeddings), and a window of 2 gives each interior token 4 neighbours against the grid's 8. G_s
and G_p need only positions and are built the same way in 1-D and 2-D.

Edges are (source, target) pairs: a node aggregates from the nodes that list it (PyG's
source-to-target flow).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEMANTIC_DEFINITIONS = ("notebook", "paper")  # G_s's position distributions (position_distributions)
CHUNK = 65536  # token maps counted at a time (:func:`chunks`)
JS_ROWS = 64  # tokens whose JS divergences to every token are computed at a time (semantic_graph)
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass(frozen=True)
class Graph:
    """edge_index (2, E) int64 (source, target), edge_weight (E,) float32."""

    edge_index: torch.Tensor
    edge_weight: torch.Tensor


def chunks(rows: int) -> list[slice]:
    """Row ranges of at most :data:`CHUNK` rows: the counts below run chunk by chunk, so their
    int64 temporaries stay a few hundred MB whatever the number of token maps (ImageNet's 2.6M
    maps with their flips) and the maps themselves may be int16."""
    return [slice(start, start + CHUNK) for start in range(0, rows, CHUNK)]


def cooccurrence_counts(grids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(K, K) int64 counts of 8-neighbour pairs over token grids (M, h, w)."""
    m, h, w = grids.shape
    counts = torch.zeros(num_tokens * num_tokens, dtype=torch.int64)
    for rows in chunks(m):
        for dy, dx in NEIGHBOURS:
            ys, yn = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
            xs, xn = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
            pairs = grids[rows, ys, xs].reshape(-1).long() * num_tokens + grids[rows, yn, xn].reshape(-1).long()
            counts += torch.bincount(pairs, minlength=num_tokens * num_tokens)
    return counts.view(num_tokens, num_tokens)


def sequence_cooccurrence_counts(sequences: torch.Tensor, num_tokens: int, window: int) -> torch.Tensor:
    """(K, K) int64 counts of the pairs (a, b) at most ``window`` places apart (offsets -window..-1
    and 1..window, in bounds) over 1-D token sequences (M, N): symmetric, diagonal included, as
    :func:`cooccurrence_counts` on a grid."""
    m, n = sequences.shape
    counts = torch.zeros(num_tokens * num_tokens, dtype=torch.int64)
    for rows in chunks(m):
        for offset in (*range(-window, 0), *range(1, window + 1)):
            here, there = slice(max(0, -offset), n - max(0, offset)), slice(max(0, offset), n - max(0, -offset))
            pairs = sequences[rows, here].reshape(-1).long() * num_tokens + sequences[rows, there].reshape(-1).long()
            counts += torch.bincount(pairs, minlength=num_tokens * num_tokens)
    return counts.view(num_tokens, num_tokens)


def prune_rows(matrix: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the diagonal, then keep per row the top max(1, int(nnz * ratio)) positive entries.

    Ties at the cut-off (equal counts on both sides of it) are broken by ``torch.topk`` over the
    whole row, an order torch does not specify; upstream's ``filter_co_matrix_by_row_proportion``
    takes ``topk`` over the row's nonzero entries only, and another reading keeps the lowest
    indices. The keep count is the same in all three, but on rows with a tie at the cut-off the
    kept neighbours may differ (fidelity finding F8: 1-9 of 32 rows of the test fixtures), so a
    graph rebuilt here from KA-MIG's token maps need not equal the released one edge for edge."""
    matrix = matrix.clone().double()
    matrix.fill_diagonal_(0)
    out = torch.zeros_like(matrix)
    for row in range(matrix.shape[0]):
        nnz = int((matrix[row] > 0).sum())
        if nnz == 0:
            continue
        keep = matrix[row].topk(max(1, int(nnz * ratio))).indices
        out[row, keep] = matrix[row, keep]
    return out


def normalise(matrix: torch.Tensor) -> Graph:
    """Dense (K, K) -> sparse with self loops (weight 1) and w deg^-1/2[row] deg^-1/2[col],
    deg = unweighted out-degree (self loop included)."""
    matrix = matrix.clone().double()
    matrix.fill_diagonal_(1.0)
    source, target = matrix.nonzero(as_tuple=True)
    degree = torch.bincount(source, minlength=matrix.shape[0]).double()
    weight = matrix[source, target] * degree[source].rsqrt() * degree[target].rsqrt()
    return Graph(torch.stack([source, target]), weight.float())


def cooccurrence_graph(maps: torch.Tensor, num_tokens: int, ratio: float = 0.05, window: int = 2) -> Graph:
    """G_co of token grids (M, h, w) (8-neighbourhood) or token sequences (M, N) (``window``)."""
    counts = (cooccurrence_counts(maps, num_tokens) if maps.dim() == 3
              else sequence_cooccurrence_counts(maps, num_tokens, window))
    return normalise(prune_rows(counts, ratio))


def position_histograms(ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(K, N) counts of each token at each position over token maps (M, N)."""
    n = ids.shape[1]
    counts = torch.zeros(num_tokens * n, dtype=torch.int64)
    for rows in chunks(len(ids)):
        counts += torch.bincount((ids[rows].long() * n + torch.arange(n)).reshape(-1), minlength=num_tokens * n)
    return counts.view(num_tokens, n).double()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Pairwise JS divergence (K, K') of row distributions p (K, N) and q (K', N), natural log."""
    m = (p[:, None] + q[None]) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return (a * (a.clamp_min(1e-300).log() - m.clamp_min(1e-300).log())).sum(-1)

    return 0.5 * (kl(p[:, None].expand_as(m)) + kl(q[None].expand_as(m)))


def position_distributions(hist: torch.Tensor, definition: str = "notebook") -> torch.Tensor:
    """Per-token distributions (K, N) over positions of the counts ``hist`` (K, N).

    ``notebook`` (the default): min-max normalise each row to [0, 1], then softmax over the N
    positions, as KA-MIG's ``graph_construction`` notebook computes them before its JS divergence
    (without the notebook's later division by a global norm, which the released graph's JS values,
    1e-4 to 5.6e-3, show was not applied). The default because it is what built the released G_s,
    which the released adapter was trained with, and what upstream-faithful rebuilding needs; the
    softmax of values in [0, 1] keeps every distribution within a factor e of uniform, so the JS
    values stay small and exp(-5 JS) near 1. ``paper``: p = counts / sum(counts), the paper's
    "normalised position histogram" (a token never seen gets the uniform distribution); its
    nearest neighbours differ from the notebook's on most rows (fidelity finding F7: 30 of 32
    rows of both test fixtures)."""
    if definition == "paper":
        total = hist.sum(1, keepdim=True)
        return torch.where(total > 0, hist / total.clamp_min(1e-300), torch.full_like(hist, 1 / hist.shape[1]))
    if definition != "notebook":
        raise ValueError(f"definition must be one of {', '.join(SEMANTIC_DEFINITIONS)}, got {definition!r}")
    low, high = hist.min(1, keepdim=True).values, hist.max(1, keepdim=True).values
    scaled = torch.where(high > low, (hist - low) / (high - low).clamp_min(1e-12), torch.zeros_like(hist))
    return scaled.softmax(dim=1)


def semantic_graph(ids: torch.Tensor, num_tokens: int, neighbours: int = 2, alpha: float = 5.0,
                   definition: str = "notebook") -> Graph:
    """G_s of token maps ids (M, N): JS divergence between the tokens' position distributions
    (:func:`position_distributions` of ``definition``), the ``neighbours`` nearest per token as
    edges weighted exp(-alpha JS), normalised (:func:`normalise`)."""
    dist = position_distributions(position_histograms(ids, num_tokens), definition)
    # JS_ROWS rows at a time: the (rows, K, N) float64 temporaries, not (K, K, N) (2 GB each on ImageNet)
    js = torch.cat([js_divergence(dist[start:start + JS_ROWS], dist) for start in range(0, num_tokens, JS_ROWS)])
    js.fill_diagonal_(float("inf"))
    nearest = js.topk(neighbours, largest=False).indices
    dense = torch.zeros(num_tokens, num_tokens, dtype=torch.float64)
    rows = torch.arange(num_tokens)[:, None].expand_as(nearest)
    dense[rows, nearest] = torch.exp(-alpha * js[rows, nearest])
    return normalise(dense)


def incompatibility(ids: torch.Tensor, labels: torch.Tensor, num_classes: int, num_tokens: int) -> torch.Tensor:
    """(C, N, K) bool: token k never seen at position i in class c."""
    n = ids.shape[1]
    seen = torch.zeros(num_classes * n * num_tokens, dtype=torch.bool)
    for rows in chunks(len(ids)):
        seen[((labels[rows].long()[:, None] * n + torch.arange(n)) * num_tokens + ids[rows].long()).reshape(-1)] = True
    return seen.logical_not_().view(num_classes, n, num_tokens)


def graph_tensors(ids: torch.Tensor, labels: torch.Tensor, num_tokens: int, num_classes: int,
                  token_shape: tuple[int, ...], prune_ratio: float, semantic: str = "notebook",
                  window: int = 2) -> dict[str, torch.Tensor]:
    """The three graphs of token maps ids (M, N) with labels (M,), as the named tensors of a graphs
    file. G_co takes the 8-neighbourhood of a 2-D ``token_shape`` (h, w), or pairs at most
    ``window`` apart on 1-D tokens (N,); ``semantic`` picks G_s's definition
    (:func:`position_distributions`)."""
    co = cooccurrence_graph(ids.view(-1, *token_shape), num_tokens, prune_ratio, window)
    sem = semantic_graph(ids, num_tokens, definition=semantic)
    return {"co_edge_index": co.edge_index, "co_edge_weight": co.edge_weight,
            "s_edge_index": sem.edge_index, "s_edge_weight": sem.edge_weight,
            "incompatible": incompatibility(ids, labels, num_classes, num_tokens).view(torch.uint8)}


def graphs_from_state(state: dict[str, torch.Tensor]) -> tuple[Graph, Graph, torch.Tensor]:
    """G_co, G_s and the incompatibility indicator (C, N, K) bool of a graphs file's tensors."""
    return (Graph(state["co_edge_index"].long(), state["co_edge_weight"].float()),
            Graph(state["s_edge_index"].long(), state["s_edge_weight"].float()),
            state["incompatible"].bool())
