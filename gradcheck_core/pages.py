"""Handing an array's memory back to the system while its values are not needed.

A check of ten million parameters holds a few arrays as long as the
parameters at once (the point, the gradient, a direction).  Where one of them
can be rebuilt exactly from elsewhere (the point, from the user's own
tensors), its pages can be given back for the moment another array is built,
and the peak of the check is one such array lower.

:func:`give_back` asks Linux to drop the pages (``madvise(MADV_DONTNEED)``):
the array stays valid, its entries read as zero until written again, and
writing them takes fresh pages.  Elsewhere, and for an array that does not
own its memory (a view, a memory-mapped file), it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from typing import Any

import numpy as np

__all__ = ["MIN_BYTES", "give_back"]

#: Arrays smaller than this are left alone: the pages saved are not worth the
#: page faults of writing them again.
MIN_BYTES = 32 << 20

_madvise: Any = None


def _libc_madvise() -> Any:
    """libc's ``madvise`` (None where there is none to call)."""
    global _madvise
    if _madvise is None:
        if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
            _madvise = False
        else:
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
            except (OSError, AttributeError):
                _madvise = False
            else:
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _madvise = fn
    return _madvise or None


def give_back(array: np.ndarray) -> bool:
    """Give the whole pages of ``array``'s memory back to the system; its values are lost.

    Parameters
    ----------
    array : numpy.ndarray
        A C-contiguous, writeable array that owns its memory (made by numpy,
        not a view or a memory-mapped file), of at least :data:`MIN_BYTES`.

    Returns
    -------
    bool
        True where the pages were given back: the entries in them then read
        as zero, and the caller must write every entry before it is read.
        False where nothing was done (another platform, an array that does not
        qualify): the values are as they were.
    """
    madvise = _libc_madvise()
    if (
        madvise is None
        or not isinstance(array, np.ndarray)
        or type(array) is not np.ndarray
        or not array.flags.owndata
        or not array.flags.c_contiguous
        or not array.flags.writeable
        or array.nbytes < MIN_BYTES
    ):
        return False
    page = mmap.PAGESIZE
    start = array.ctypes.data
    first = -(-start // page) * page  # whole pages only: the bytes around them may be another's
    last = (start + array.nbytes) // page * page
    if last <= first:
        return False
    return bool(madvise(first, last - first, mmap.MADV_DONTNEED) == 0)
