"""Exact cosine k-nearest neighbours of every row of a feature matrix among the other rows.

The search is blocked: the unit-normalised feature matrix is cut into row blocks, each pair of
blocks (i <= j) is multiplied once and the product serves the queries of both blocks (cosine
similarity is symmetric), so memory stays at ``block_size ** 2`` floats instead of N x N.
Neighbours are ordered by distance, then by index, so equal distances (e.g. byte-identical
images) always resolve the same way. On the CPU the products run on oneDNN, one block per
thread, and each query's current k-th best similarity screens the blocks, so only the few
entries that can still enter a top k are merged (:func:`_screen`); the result is the same.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from animal_assets.core.device import resolve_device

# Groups of strided columns whose maximum screens a similarity block (see _screen).
_FOLD = 8
# Rows per block at most on the CPU: one 1,024 x 1,024 float32 block (4 MiB) per thread stays in
# the L3 cache while its partial products are summed and screened; oneDNN's product is no
# faster on larger blocks, which also recompute more of the diagonal blocks' symmetric halves.
_CPU_BLOCK = 1024
# Columns per part of oneDNN's product (see _blocked_knn).
_ONEDNN_DEPTH = 128


def _check_features(features: np.ndarray, k: int, block_size: int) -> None:
    if not isinstance(features, np.ndarray):
        raise TypeError(f"ood.py: features must be a numpy array, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"ood.py: features must be 2-D (N, D), got shape {features.shape}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"ood.py: k must be a positive int, got {k!r}")
    if features.shape[0] < k + 1:
        raise ValueError(
            f"ood.py: need more than k={k} rows to find k neighbours besides each point itself, "
            f"got N={features.shape[0]}"
        )
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"ood.py: block_size must be a positive int, got {block_size!r}")
    if not np.isfinite(features).all():
        raise ValueError("ood.py: features contain NaN or infinity")


def _lex_best(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k entries with the highest similarity, ties going to the lower index.

    (similarity, index) pairs are packed into one int64 key that orders like the pair, so a
    single ``topk`` on distinct keys gives the order without any tie ambiguity.
    """
    # Adding +0.0 turns -0.0 into +0.0 so both zeros share one bit pattern.
    bits = (vals + 0.0).view(torch.int32).to(torch.int64)
    # Float bit patterns order like sign-magnitude integers; flipping the magnitude bits of
    # negative values makes them order like two's-complement integers.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = bits * (1 << 32) + ((1 << 31) - 1 - idx)
    pos = torch.topk(key, k, dim=1).indices
    return vals.gather(1, pos), idx.gather(1, pos)


def _block_best(sims: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a (b, c) similarity block, the best min(k, c) columns as global indices.

    ``topk`` picks arbitrarily among equal values, which only matters when the k-th and
    (k+1)-th values are equal; those rows are redone with a stable full sort.
    """
    c = sims.shape[1]
    kk = min(k, c)
    vals, cols = torch.topk(sims, min(kk + 1, c), dim=1)
    if kk < c:
        tied = torch.nonzero(vals[:, kk - 1] == vals[:, kk]).flatten()
        vals, cols = vals[:, :kk].clone(), cols[:, :kk].clone()
        if tied.numel():
            exact = torch.sort(sims[tied], dim=1, descending=True, stable=True)
            vals[tied], cols[tied] = exact.values[:, :kk], exact.indices[:, :kk]
    return vals, cols + offset


def knn(
    features: np.ndarray,
    *,
    k: int = 10,
    block_size: int = 4096,
    device: str | torch.device = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-nearest neighbours of every row among the other rows.

    A row is never its own neighbour; an identical copy of it elsewhere is (at distance 0).
    All-zero rows have similarity 0 (distance 1) to everything. Each pair of row blocks is
    multiplied once, for the queries of both blocks. On the CPU only the entries that reach a
    query's current k-th best similarity are merged, which leaves the float32 products as
    nearly all of the work (30,000 x 1,280 is 1.2e12 floating-point operations), and as many
    blocks are multiplied at once as PyTorch has threads, each on one thread.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        One embedding per row; N must exceed k.
    k : int
        Neighbours per row.
    block_size : int
        Rows per block; peak extra memory is about ``block_size ** 2`` float32 values per
        thread. The CPU uses at most 1,024 (a 4 MiB block stays in cache).
    device : str or torch.device
        ``"auto"`` picks CUDA when available. Computation is float32 on every device, with
        TF32 and bf16 matmul shortcuts turned off for the call.

    Returns
    -------
    distances : np.ndarray, float32, shape (N, k)
        Cosine distances ``1 - cos``, ascending along each row.
    indices : np.ndarray, int64, shape (N, k)
        Row indices of the neighbours; among equal distances the lower index comes first.
    """
    _check_features(features, k, block_size)
    dev = resolve_device(device)
    with _full_float32():
        if dev.type == "cpu":
            return _blocked_knn(features, k, min(block_size, _CPU_BLOCK), dev, screen=True,
                                onednn=_onednn_available(), workers=torch.get_num_threads())
        return _blocked_knn(features, k, block_size, dev, screen=False, onednn=False)


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """Keep float32 products in full float32 for the duration, whatever the process set.

    TF32 (CUDA, 10-bit mantissa) or bf16 (oneDNN on the CPU, which ``set_float32_matmul_precision
    ("medium")`` turns on) would reorder near neighbours.
    """
    cuda = torch.backends.cuda.matmul
    onednn = getattr(torch.backends.mkldnn, "matmul", None)
    tf32, precision = cuda.allow_tf32, getattr(onednn, "fp32_precision", None)
    cuda.allow_tf32 = False
    if precision is not None:
        onednn.fp32_precision = "ieee"
    try:
        yield
    finally:
        cuda.allow_tf32 = tf32
        if precision is not None:
            onednn.fp32_precision = precision


@functools.lru_cache(maxsize=None)
def _onednn_available() -> bool:
    """Whether this PyTorch build multiplies tensors in oneDNN's layout (``Tensor.to_mkldnn``)
    and ``linear`` there computes ``a @ b.T``."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        a = torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.5, 6.0]])
        b = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
        return torch.equal(_linear(a.to_mkldnn(), b.to_mkldnn()), a @ b.T)
    except (AttributeError, RuntimeError):
        return False


def _linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` of two tensors in oneDNN's layout (oneDNN's inner product), as a dense tensor."""
    return torch.nn.functional.linear(a, b).to_dense()


def _product(rows: list[torch.Tensor], cols: list[torch.Tensor], onednn: bool) -> torch.Tensor:
    """Cosine similarities (len rows, len cols) between two blocks of unit rows, each given as
    column parts whose products add up to the full one (in oneDNN's layout with ``onednn``,
    where the parts' products are also summed, in order, before one conversion back)."""
    if not onednn:
        return rows[0] @ cols[0].T
    sims = None
    for a, b in zip(rows, cols):
        partial = torch.nn.functional.linear(a, b)
        sims = partial if sims is None else sims.add_(partial)
    return sims.to_dense()


def _blocked_knn(
    features: np.ndarray,
    k: int,
    block_size: int,
    dev: torch.device,
    *,
    screen: bool,
    onednn: bool,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN over blocks of rows.

    ``screen`` merges only the entries that can still enter a top k (:func:`_screen`) instead of
    every block's top k; ``onednn`` computes the CPU products with oneDNN (:func:`_product`);
    ``workers`` above 1 multiplies that many blocks at once (:func:`_run_tasks`).
    """
    n = features.shape[0]
    with torch.inference_mode():
        x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=dev)
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        # PyTorch's bundled MKL runs its AVX2 kernel on AMD CPUs, where oneDNN uses AVX-512.
        # oneDNN sums each dot product in one running total, with a larger rounding error than
        # MKL's; summing products over parts of _ONEDNN_DEPTH columns brings it back to MKL's
        # level.
        # Each part is normalised on its own, so no whole normalised copy is made besides them.
        width = max(x.shape[1], 1)
        onednn = onednn and x.shape[1] > 0
        depth = _ONEDNN_DEPTH if onednn else width
        parts = [(x[:, s:s + depth] / norms).contiguous() for s in range(0, width, depth)]
        del x
        blocks = [slice(s, min(s + block_size, n)) for s in range(0, n, block_size)]
        # Each block's parts, converted to oneDNN's layout once for all its products.
        pieces = [[part[rows].to_mkldnn() if onednn else part[rows] for part in parts]
                  for rows in blocks]
        del parts
        best_vals = torch.full((n, k), -math.inf, device=dev)
        best_idx = torch.full((n, k), -1, dtype=torch.int64, device=dev)
    # Products run in parallel; merges into the running best take turns.
    merging = threading.Lock()

    def diagonal(i: int) -> None:
        rows = blocks[i]
        with torch.inference_mode():
            sims = _product(pieces[i], pieces[i], onednn)
            sims.fill_diagonal_(-math.inf)
            with merging:
                _merge_block(best_vals, best_idx, rows.start, sims, rows.start, k, screen=False)

    def off_diagonal(i: int, j: int) -> None:
        rows, cols = blocks[i], blocks[j]
        with torch.inference_mode():
            # One product serves both blocks' queries: rows of sims for one block, its columns
            # (the transposed view) for the other.
            sims = _product(pieces[i], pieces[j], onednn)
            with merging:
                _merge_block(best_vals, best_idx, rows.start, sims, cols.start, k, screen=screen)
                _merge_block(best_vals, best_idx, cols.start, sims.T, rows.start, k, screen=screen)

    # Diagonal blocks first: afterwards each row already holds k real neighbours (when its
    # block has more than k rows), whose k-th similarity screens the off-diagonal blocks.
    _run_tasks([functools.partial(diagonal, i) for i in range(len(blocks))], workers)
    _run_tasks([functools.partial(off_diagonal, i, j)
                for i in range(len(blocks)) for j in range(i + 1, len(blocks))], workers)
    with torch.inference_mode():
        distances = (1.0 - best_vals).clamp_min(0.0)
        return distances.cpu().numpy(), best_idx.cpu().numpy()


def _run_tasks(tasks: list[Callable[[], None]], workers: int) -> None:
    """Run the tasks in order, or on ``workers`` threads of one PyTorch thread each.

    Many short multi-threaded operations wait at OpenMP barriers whenever another process
    holds one of the cores, which slows the kNN down badly on a busy machine. Whole blocks per
    thread never wait for each other. PyTorch's thread count reads 1 while the workers run and
    is restored after.
    """
    if workers <= 1:
        for task in tasks:
            task()
        return
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        for future in [pool.submit(task) for task in tasks]:
            future.result()
    finally:
        pool.shutdown(cancel_futures=True)
        torch.set_num_threads(threads)


def _merge_block(
    best_vals: torch.Tensor,
    best_idx: torch.Tensor,
    query_start: int,
    sims: torch.Tensor,
    offset: int,
    k: int,
    *,
    screen: bool,
) -> None:
    """Fold a (b, c) block of similarities (queries from ``query_start``, candidates from
    ``offset``) into the running best (N, k), in place."""
    rows = slice(query_start, query_start + sims.shape[0])
    if screen:
        hits = _screen(sims, best_vals[rows, -1].contiguous())
        if hits is not None:
            r, c, vals = hits
            if r.numel():
                _merge_sparse(best_vals, best_idx, r + query_start, vals, c + offset, k)
            return
    vals, idx = _block_best(sims.contiguous(), offset, k)
    best_vals[rows], best_idx[rows] = _lex_best(
        torch.cat([best_vals[rows], vals], dim=1), torch.cat([best_idx[rows], idx], dim=1), k
    )


def _screen(
    sims: torch.Tensor, floor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Entries (rows, cols, values) of a (b, c) block with ``sims[r, c] >= floor[r]``.

    ``floor`` holds each query's current k-th best similarity: an entry below it can never
    enter that query's top k (equal ones can, by a lower index). The maximum over groups of
    ``_FOLD`` columns screens whole groups first. None when so many groups pass that a dense
    merge is cheaper.
    """
    if not (sims.is_contiguous() or sims.T.is_contiguous()):
        sims = sims.contiguous()
    b, c = sims.shape
    width = c // _FOLD
    main = width * _FOLD
    rows, cols = sims.new_empty(0, dtype=torch.int64), sims.new_empty(0, dtype=torch.int64)
    if width:
        # Group q of row r holds columns q, q + width, q + 2 * width, ...; the maximum is taken
        # across contiguous slabs (a strided reduction over a transposed view is far slower).
        if sims.is_contiguous():
            group_max = sims[:, :main].unflatten(1, (_FOLD, width)).amax(dim=1)
        else:
            group_max = sims.T[:main].unflatten(0, (_FOLD, width)).amax(dim=0).T
        rows, groups = torch.nonzero(group_max >= floor[:, None], as_tuple=True)
        if rows.numel() * _FOLD * 8 > b * c:
            return None
        cols = (groups[:, None] + width * torch.arange(_FOLD, device=sims.device)).flatten()
        rows = rows[:, None].expand(-1, _FOLD).flatten()
    if main < c:
        rest_rows, rest_cols = torch.nonzero(sims[:, main:] >= floor[:, None], as_tuple=True)
        rows, cols = torch.cat([rows, rest_rows]), torch.cat([cols, rest_cols + main])
    # One flat gather from the block's storage is much faster than sims[rows, cols].
    storage = (sims if sims.is_contiguous() else sims.T).view(-1)
    vals = storage[rows * sims.stride(0) + cols * sims.stride(1)]
    keep = vals >= floor[rows]
    return rows[keep], cols[keep], vals[keep]


def _merge_sparse(
    best_vals: torch.Tensor,
    best_idx: torch.Tensor,
    rows: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    k: int,
) -> None:
    """Merge candidate neighbours ``idx`` at similarity ``vals`` of queries ``rows`` (all (M,))
    into the running best (N, k), in place."""
    order = torch.argsort(rows, stable=True)
    rows, vals, idx = rows[order], vals[order], idx[order]
    queries, which, counts = torch.unique_consecutive(rows, return_inverse=True, return_counts=True)
    # Each query's candidates go after its k current entries in one padded row; the padding
    # (-inf, the largest index) ranks below every real entry, and each row has more than k
    # real entries, so the padding is never picked.
    slot = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[which] + k
    pool_vals = best_vals.new_full((len(queries), k + int(counts.max())), -math.inf)
    pool_idx = torch.full_like(pool_vals, (1 << 31) - 1, dtype=torch.int64)
    pool_vals[:, :k], pool_idx[:, :k] = best_vals[queries], best_idx[queries]
    pool_vals[which, slot], pool_idx[which, slot] = vals, idx
    best_vals[queries], best_idx[queries] = _lex_best(pool_vals, pool_idx, k)
