"""COCO compressed RLE validation, vectorised over many masks, without decoding a mask.

pycocotools' decoder does not bound-check the runs, so a corrupt string can read past its end or
claim more pixels than the image has; here every string is parsed in numpy at once: characters
48..111, every number ends inside the string, no number wider than 32 bits, no negative run, and
the runs add up to height x width. The area (foreground pixels) comes out of the same pass.
"""

from __future__ import annotations

import numpy as np


def rle_validate(counts: list, sizes: list) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """For COCO compressed RLE strings: (ok bool [n], area int64 [n], problem str per item).

    A string is decodable when it uses only characters 48..111, every number ends inside it, no
    number is wider than 32 bits, no run is negative and the runs add up to height x width.
    """
    n = len(counts)
    ok, problem, hw, enc = _check_inputs(counts, sizes)
    lens = np.array([len(b) for b in enc], dtype=np.int64)
    area = np.zeros(n, dtype=np.int64)
    if lens.sum() == 0:
        return ok, area, problem
    total, area, faults = _decode_runs(enc, lens, n)
    for sids, why in faults:
        for i in np.unique(sids):
            if ok[i]:
                ok[i], problem[i] = False, why
    for i in np.flatnonzero(ok & (total != hw)):
        ok[i], problem[i] = False, f"mask runs cover {total[i]} pixels, size says {hw[i]}"
    area = np.where(ok, area, 0)
    return ok, area, problem


def _check_inputs(counts: list, sizes: list):
    """Per item: ok, problem, height x width and the ASCII bytes to parse (empty when not ok)."""
    n = len(counts)
    ok = np.ones(n, dtype=bool)
    problem = [""] * n
    hw = np.zeros(n, dtype=np.int64)
    enc: list[bytes] = []
    for i, (c, s) in enumerate(zip(counts, sizes, strict=True)):
        b = b""
        try:
            h, w = (int(v) for v in s)
            if h <= 0 or w <= 0:
                raise ValueError
            hw[i] = h * w
        except (TypeError, ValueError):
            ok[i], problem[i] = False, f"mask size must be [height, width] > 0, got {s!r}"
        if not isinstance(c, str) or not c:
            ok[i] = False
            problem[i] = problem[i] or "mask counts must be a non-empty RLE string"
        else:
            try:
                b = c.encode("ascii")
            except UnicodeEncodeError:
                ok[i], problem[i] = False, problem[i] or "mask counts has non-ASCII characters"
        enc.append(b if ok[i] else b"")
    return ok, problem, hw, enc


def _decode_numbers(enc: list[bytes], lens: np.ndarray):
    """The numbers of every string at once (5 bits a character, a continuation bit, sign-extended).

    Returns (x: the numbers' values, num_sid: the string of each number, faults: (string ids,
    reason) pairs for bad characters, truncated numbers and numbers wider than 32 bits)."""
    n = len(enc)
    buf = np.frombuffer(b"".join(enc), dtype=np.uint8).astype(np.int64) - 48
    sid = np.repeat(np.arange(n), lens)
    bad_char = (buf < 0) | (buf > 63)
    buf = np.clip(buf, 0, 63)
    end = (buf & 0x20) == 0
    last_pos = np.cumsum(lens)[lens > 0] - 1
    truncated_sid = sid[last_pos][~end[last_pos]]
    end[last_pos] = True  # cut numbers at the string's end (already marked invalid)
    num_id = np.concatenate([[0], np.cumsum(end)[:-1]])
    num_start = np.flatnonzero(np.concatenate([[True], end[:-1]]))
    k = np.arange(len(buf)) - num_start[num_id]
    too_wide_sid = sid[k > 6]
    val = (buf & 0x1F) << (5 * np.minimum(k, 6))
    x = np.add.reduceat(val, num_start)
    last_k = k[end]
    neg = (buf[end] & 0x10) != 0
    x = np.where(neg, x - (np.int64(1) << (5 * (last_k + 1))), x)
    faults = [(sid[bad_char], "mask counts has characters outside the RLE alphabet"),
              (truncated_sid, "mask counts ends inside a number"),
              (too_wide_sid, "mask counts has a number wider than 32 bits")]
    return x, sid[end], faults


def _decode_runs(enc: list[bytes], lens: np.ndarray, n: int):
    """(total pixels, foreground pixels, faults) per string; a run after the first two is the
    number plus the run two before it (COCO's delta coding)."""
    x, num_sid, faults = _decode_numbers(enc, lens)
    n_num = len(x)
    first_num = np.full(n, -1, dtype=np.int64)
    first_num[num_sid[::-1]] = np.arange(n_num)[::-1]
    m = np.arange(n_num) - first_num[num_sid]
    # runs: cnts[m] = x[m] + cnts[m-2] for m > 2, i.e. cumulative sums along each parity chain
    chain = np.where(m == 0, -1, num_sid * 2 + (m % 2))
    order = np.lexsort((m, chain))
    cs = np.cumsum(x[order])
    ch_sorted = chain[order]
    starts = np.flatnonzero(np.concatenate([[True], ch_sorted[1:] != ch_sorted[:-1]]))
    base = np.repeat(cs[starts] - x[order][starts], np.diff(np.append(starts, n_num)))
    cnts = np.empty(n_num, dtype=np.int64)
    cnts[order] = cs - base
    cnts = np.where(m == 0, x, cnts)
    total = np.bincount(num_sid, weights=cnts, minlength=n).astype(np.int64)
    area = np.bincount(num_sid, weights=np.where(m % 2 == 1, cnts, 0), minlength=n).astype(np.int64)
    faults.append((num_sid[cnts < 0], "mask counts decodes to a negative run"))
    return total, area, faults
