"""Pictures of what each stage did: thumbnail galleries with captions (the plots are
:mod:`animal_assets.core.plots`), and the markdown that embeds a picture.

Everything here returns encoded image bytes (JPEG for photo galleries) that the
caller writes beside its outputs and embeds in markdown as a ``data:`` URI, so a person sees the
images where the results are listed, without another tool. Sizes are bounded: a gallery shows at
most ``max_items`` thumbnails and is re-encoded smaller until it fits ``max_bytes``.

Rendering is deterministic: the same inputs give the same bytes (no timestamps in the files).
"""
from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

#: Thumbnails per gallery: two rows of eight fit a laptop screen without scrolling.
MAX_ITEMS = 16
#: Encoded size a gallery is squeezed under, so that an asset's galleries and plots stay small inline.
MAX_GALLERY_BYTES = 48_000
_PAD = 6
_CAPTION_LINES = 3
_FONT_SIZE = 11
REVIEW_TAG = "review"  # reason of a reviewer's drop (see review.py)
_HIGHLIGHT = (31, 119, 180)  # frame of thumbnails a person decided on (matplotlib's blue)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled font; a Pillow built without FreeType falls back to its bitmap font.
    return ImageFont.load_default(size=_FONT_SIZE)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """``text`` shortened from the right until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _wrap(draw: ImageDraw.ImageDraw, caption: str, width: int, font) -> list[str]:
    """Caption lines: its own lines, each broken at spaces where too wide, at most
    ``_CAPTION_LINES``; the last is shortened if text is left over."""
    lines: list[str] = []
    for paragraph in str(caption).split("\n"):
        current = ""
        for word in paragraph.split(" "):
            trial = f"{current} {word}" if current else word
            if current and draw.textlength(trial, font=font) > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    if len(lines) > _CAPTION_LINES:
        lines = lines[:_CAPTION_LINES - 1] + [" ".join(lines[_CAPTION_LINES - 1:])]
    return [_fit(draw, line, width, font) for line in lines]


def _as_rgb(image: np.ndarray) -> Image.Image:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"media.py: a thumbnail must be a (H, W, 3) uint8 array, got {array.shape} {array.dtype}"
        )
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def gallery_image(
    images: Sequence[np.ndarray] | np.ndarray,
    captions: Sequence[str],
    *,
    highlight: Sequence[bool] | None = None,
    columns: int = 8,
    thumb: int = 80,
    max_items: int = MAX_ITEMS,
) -> Image.Image:
    """Lay out up to ``max_items`` thumbnails in a grid, each with a caption of up to three lines.

    Parameters
    ----------
    images : sequence of np.ndarray, each (H, W, 3) uint8, or np.ndarray (N, H, W, 3) uint8
        The pictures, in display order.
    captions : sequence of str, length N
        One caption per picture; ``"\\n"`` starts a new line, and a line too wide for the
        thumbnail is broken at spaces (three lines at most, the last shortened).
    highlight : sequence of bool, length N, optional
        Thumbnails to frame in colour (e.g. decisions made by a person).
    columns : int
        Thumbnails per row (fewer when there are fewer pictures).
    thumb : int
        Side of a thumbnail in pixels; pictures are resized to it.
    max_items : int
        Pictures beyond this count are left out.

    Returns
    -------
    PIL.Image.Image
        The RGB grid.
    """
    n = min(len(images), len(captions), max_items)
    if len(images) != len(captions):
        raise ValueError(f"media.py: {len(images)} images but {len(captions)} captions")
    if n == 0:
        raise ValueError("media.py: a gallery needs at least one image")
    if columns < 1 or thumb < 16:
        raise ValueError(f"media.py: columns must be >= 1 and thumb >= 16, got {columns}, {thumb}")
    font = _font()
    line_h = _FONT_SIZE + 3
    cell_w, cell_h = thumb + _PAD, thumb + _PAD + _CAPTION_LINES * line_h
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * cell_w + _PAD, rows * cell_h + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x = _PAD + (i % cols) * cell_w
        y = _PAD + (i // cols) * cell_h
        picture = _as_rgb(images[i]).resize((thumb, thumb), Image.Resampling.BICUBIC)
        canvas.paste(picture, (x, y))
        if highlight is not None and highlight[i]:
            draw.rectangle((x - 3, y - 3, x + thumb + 2, y + thumb + 2), outline=_HIGHLIGHT, width=3)
        for j, line in enumerate(_wrap(draw, captions[i], thumb, font)):
            draw.text((x, y + thumb + 2 + j * line_h), line, fill="black", font=font)
    return canvas


def gallery(
    images: Sequence[np.ndarray] | np.ndarray,
    captions: Sequence[str],
    *,
    highlight: Sequence[bool] | None = None,
    columns: int = 8,
    thumb: int = 80,
    max_items: int = MAX_ITEMS,
    max_bytes: int = MAX_GALLERY_BYTES,
) -> bytes:
    """A thumbnail grid (see :func:`gallery_image`) encoded as JPEG of at most ``max_bytes``.

    JPEG rather than PNG: a grid of photographs takes a fraction of PNG's bytes as JPEG, and
    the gallery travels inline in the asset's metadata. When the first encoding is too large,
    the quality is lowered, then the last row is left out, until it fits.

    Parameters
    ----------
    images, captions, highlight, columns, thumb, max_items
        As for :func:`gallery_image`.
    max_bytes : int
        Largest encoded size.

    Returns
    -------
    bytes
        JPEG bytes.
    """
    n = min(len(images), max_items)
    while True:
        grid = gallery_image(images, captions, highlight=highlight, columns=columns, thumb=thumb,
                             max_items=n)
        for quality in (85, 75, 65, 55):
            data = _encode(grid, "JPEG", quality=quality)
            if len(data) <= max_bytes:
                return data
        cols = min(columns, n)
        if n <= cols:
            if n == 1:
                raise ValueError(f"media.py: one thumbnail does not fit in {max_bytes} bytes")
            n = max(1, n // 2)
        else:
            n -= cols


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _name(class_names: Sequence[str], k: int) -> str:
    return str(class_names[k]) if 0 <= k < len(class_names) else str(k)


def _short(image_id: str) -> str:
    """The first 8 hex digits of the uuid: enough to find the row in a table."""
    return str(image_id).removeprefix("img_")[:8]


def _interleave(groups: Sequence[Sequence[int]], limit: int) -> list[int]:
    """Round-robin over groups, so every kind gets a place among the first ``limit``."""
    out: list[int] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [int(g[i]) for g in groups if i < len(g)]
    return out[:limit]


def _labelled_gallery(images: np.ndarray, rows, heads: Sequence[str], ids: pd.Series,
                      given: Sequence[int], class_names: Sequence[str], max_items: int) -> bytes:
    """A gallery of ``images[rows]``, each captioned with its head line, given label and id."""
    captions = [f"{head}\n{_name(class_names, int(given[i]))}\n{_short(ids.iloc[i])}"
                for head, i in zip(heads, rows)]
    return gallery(np.asarray(images[list(rows)]), captions, max_items=max_items)


def outlier_gallery(
    images: np.ndarray, table: pd.DataFrame, given: Sequence[int], class_names: Sequence[str],
    *, max_items: int = MAX_ITEMS,
) -> bytes:
    """The most outlying images, most outlying first, captioned with rank, score and label.

    Parameters
    ----------
    images : np.ndarray, shape (N, H, W, 3) uint8
        Usable images, aligned with ``table``.
    table : pandas.DataFrame, N rows
        ``id``, ``score``, ``rank`` (0 = most outlying) and ``flag``.
    given : sequence of int, length N
        Given labels.
    class_names : sequence of str, length K
        Names for the captions.
    max_items : int
        Most thumbnails.

    Returns
    -------
    bytes
        JPEG bytes.
    """
    order = np.argsort(table["rank"].to_numpy(), kind="stable")[:max_items]
    heads = [f"#{int(table['rank'].iloc[i]) + 1}  score {float(table['score'].iloc[i]):.3f}" for i in order]
    return _labelled_gallery(images, order, heads, table["id"], given, class_names, max_items)


def decision_galleries(
    images: np.ndarray, decisions: pd.DataFrame, class_names: Sequence[str], *,
    max_items: int = MAX_ITEMS,
) -> dict[str, bytes]:
    """Galleries of the relabelled images, the dropped images and the duplicate groups whose
    copies carry different labels; decisions by a reviewer come first and are framed.

    Parameters
    ----------
    images : np.ndarray, shape (N, H, W, 3) uint8
        Usable images, aligned with ``decisions``.
    decisions : pandas.DataFrame, N rows
        ``id``, ``given``, ``label``, ``action``, ``reason``, ``confidence``, ``dup_group`` and
        optionally ``copy_group`` and ``source`` (``auto`` / ``review``).
    class_names : sequence of str, length K
        Names for the captions.
    max_items : int
        Most thumbnails per gallery.

    Returns
    -------
    dict of str to bytes
        ``relabelled``, ``dropped``, ``duplicate_conflicts`` (JPEG bytes), each only when it
        has at least one image.
    """
    d = decisions.reset_index(drop=True)
    reviewed = (d["source"] == "review").to_numpy() if "source" in d else np.zeros(len(d), bool)
    given = d["given"].to_numpy(dtype=np.int64)
    label = d["label"].to_numpy(dtype=np.int64)
    conf = d["confidence"].to_numpy(dtype=np.float64)
    action, reason = d["action"].to_numpy(), d["reason"].to_numpy()
    ids = d["id"].astype(str).to_numpy()

    def tag(i: int) -> str:
        return ("review " if reviewed[i] else "") + _short(ids[i])

    def first_reviewed(rows: np.ndarray, key: np.ndarray) -> np.ndarray:
        return rows[np.lexsort((key[rows], ~reviewed[rows]))]

    out: dict[str, bytes] = {}
    rows = first_reviewed(np.flatnonzero(action == "relabel"), -conf)[:max_items]
    if len(rows):
        out["relabelled"] = gallery(
            images[rows], [f"{_name(class_names, given[i])} -> {_name(class_names, label[i])} "
                           f"{conf[i]:.2f}\n{tag(i)}" for i in rows],
            highlight=reviewed[rows], max_items=max_items)
    dropped = np.flatnonzero(action == "drop")
    by_reason = [first_reviewed(dropped[reason[dropped] == r], conf)
                 for r in sorted(set(reason[dropped]), key=lambda r: (r != REVIEW_TAG, r))]
    rows = np.array(_interleave(by_reason, max_items), dtype=np.int64)
    if len(rows):
        out["dropped"] = gallery(
            images[rows], [f"{reason[i]}\n{_name(class_names, given[i])}\n{tag(i)}"
                           for i in rows],
            highlight=reviewed[rows], max_items=max_items)
    # the groups whose label was decided together (copy_group), else the byte-identical ones
    group = d["copy_group" if "copy_group" in d else "dup_group"].to_numpy()
    frame = pd.DataFrame({"group": group, "given": given})
    by_group = frame.groupby("group", sort=False)["given"]
    conflicted = frame[((by_group.transform("size") > 1)
                        & (by_group.transform("nunique") > 1)).to_numpy()]
    # groups in order of appearance, a few copies of each: enough to show the conflict
    first_copies = conflicted[conflicted.groupby("group", sort=False).cumcount() < 4]
    order = first_copies.groupby("group", sort=False).ngroup().to_numpy()
    members = first_copies.index.to_numpy()[np.lexsort((first_copies.index.to_numpy(), order))]
    if len(members):
        rows = members[:max_items]
        out["duplicate_conflicts"] = gallery(
            images[rows],
            [f"group {group[i]}\n{_name(class_names, given[i])}\n"
             + (f"-> {_name(class_names, label[i])}" if label[i] >= 0 else
                f"drop ({'copy' if reason[i] == 'duplicate' else reason[i]})")
             for i in rows],
            highlight=reviewed[rows], max_items=max_items)
    return out


def generated_gallery(
    images: np.ndarray, ids: pd.DataFrame, class_names: Sequence[str], *,
    max_items: int = MAX_ITEMS,
) -> bytes | None:
    """Generated (augmented) training images, a few per class in turn, with their source.

    Parameters
    ----------
    images : np.ndarray, shape (M, H, W, 3) uint8
        The training export's images, aligned with ``ids``.
    ids : pandas.DataFrame, M rows
        ``id``, ``label``, ``source_id``, ``generated``.
    class_names : sequence of str, length K
        Names for the captions.
    max_items : int
        Most thumbnails.

    Returns
    -------
    bytes or None
        JPEG bytes; None when nothing was generated.
    """
    generated = ids["generated"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    labels = ids["label"].to_numpy(dtype=np.int64)
    per_class = [np.flatnonzero(generated & (labels == k)) for k in np.unique(labels[generated])]
    rows = np.array(_interleave(per_class, max_items), dtype=np.int64)
    if not len(rows):
        return None
    captions = [f"{_name(class_names, labels[i])} (generated)\nfrom {_short(ids['source_id'].iloc[i])}"
                for i in rows]
    return gallery(images[rows], captions, max_items=max_items)


# --------------------------------------------------------------------------------------------
# markdown


def mime_type(data: bytes) -> str:
    """``image/png`` or ``image/jpeg`` from the first bytes; other formats are refused."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    raise ValueError("media.py: only PNG and JPEG images can be embedded")


def data_uri(data: bytes) -> str:
    """``data:image/...;base64,...`` of PNG or JPEG bytes."""
    return f"data:{mime_type(data)};base64,{base64.b64encode(data).decode('ascii')}"


def image_markdown(data: bytes, *, alt: str, caption: str = "") -> str:
    """Markdown that shows the image inline, with an optional line of text under it."""
    # Square brackets would end the alt text early.
    alt = alt.replace("[", "(").replace("]", ")")
    md = f"![{alt}]({data_uri(data)})"
    return f"{md}\n\n{caption}" if caption else md


def write_image(path: str | os.PathLike, data: bytes) -> str:
    """Write image bytes atomically; returns the path as a string."""
    from animal_assets.core.atomic import write_bytes

    write_bytes(path, data)
    return str(path)


def quality_gallery(
    images: np.ndarray, table: pd.DataFrame, class_names: Sequence[str], *,
    kinds: Sequence[str], max_items: int = MAX_ITEMS,
) -> bytes | None:
    """The flagged images of every quality kind, the most extreme of each kind first and the
    kinds taking turns, captioned with kind, score, given label and id; None when none is flagged.

    Parameters
    ----------
    images : np.ndarray, shape (N, H, W, 3) uint8
        Usable images, aligned with ``table``.
    table : pandas.DataFrame, N rows
        ``id``, ``given``, and per kind its score column ``{kind}`` and flag column ``{kind}_flag``.
    class_names : sequence of str, length K
    kinds : sequence of str
        The kinds, in the order they take turns.
    max_items : int
        Most thumbnails.
    """
    groups, labels = [], {}
    for kind in kinds:
        flagged = np.flatnonzero(table[f"{kind}_flag"].to_numpy(dtype=bool))
        score = table[kind].to_numpy()[flagged]
        # the direction of "extreme": high for light and padded, low for the others
        order = np.argsort(-score if kind in ("light", "padded") else score, kind="stable")
        groups.append(flagged[order])
        for i in flagged:
            labels.setdefault(int(i), kind)  # an image of several kinds shows under its first
    picked = list(dict.fromkeys(_interleave(groups, len(table))))[:max_items]
    if not picked:
        return None
    heads = [f"{labels[i]} {float(table[labels[i]].iloc[i]):.3g}" for i in picked]
    return _labelled_gallery(images, picked, heads, table["id"], table["given"].to_numpy(), class_names,
                             max_items)


def near_copy_gallery(
    images: np.ndarray, groups: pd.DataFrame, index_of: dict, class_names: Sequence[str], *,
    max_items: int = MAX_ITEMS,
) -> bytes | None:
    """The first two images of the top near-copy groups side by side, groups whose copies carry
    different given labels first, then the larger ones; captioned with group, given label and id.
    None when there is no group.

    Parameters
    ----------
    images : np.ndarray, shape (N, H, W, 3) uint8
    groups : pandas.DataFrame
        :func:`animal_assets.core.near_duplicates.group_table`.
    index_of : dict
        Image id -> row of ``images``.
    class_names : sequence of str
    max_items : int
        Most thumbnails (two per group).
    """
    if not len(groups):
        return None
    top = groups.sort_values(["conflict", "size", "group"], ascending=[False, False, True], kind="stable")
    rows, captions = [], []
    for _, g in top.head(max(1, max_items // 2)).iterrows():
        members = str(g["members"]).split()[:2]
        labels = str(g["given"]).split()[:2]
        for image_id, label in zip(members, labels):
            rows.append(index_of[image_id])
            captions.append(f"group {int(g['group'])}{' conflict' if g['conflict'] else ''}\n"
                            f"{_name(class_names, int(label))}\n{_short(image_id)}")
    return gallery(np.asarray(images[rows]), captions, max_items=max_items)
