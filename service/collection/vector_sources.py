"""Sources of precomputed vectors, read safely a chunk at a time: a folder (``vectors.npy``,
``ids.txt`` or ``ids.npy``, optionally ``metadata.jsonl``), an ``.npz`` or a ``.parquet``.

Whoever names the source, the reading is bounded and cannot hurt the process:

- every file is opened once and must be a regular file (a FIFO or a device is refused before
  it is read); ``follow_links=False`` (the server's imports) also refuses a symbolic link
  inside a folder source, so a source cannot lead outside the folder it was checked in;
- ``.npy`` files are never memory-mapped (a file truncated while it is read would kill the
  process with SIGBUS): rows are read with ``pread`` at their offset and a short read is
  "changed while being read"; a header is checked against the file's size before any row is;
- text files are read in lines of bounded length, split at ``\\n`` only (``\\r\\n`` taken);
  ids are streamed like metadata, never all held at once;
- a chunk holds at most ``size`` rows and about :data:`CHUNK_BYTES` of metadata text;
- an ``.npz`` is read whole (zip), so it is capped at :data:`MAX_NPZ_BYTES` uncompressed;
- Parquet is read a record batch at a time; a row without a usable vector is refused alone.

Every failure is a :class:`SourceError` with a one-line reason that names the source as the
caller called it, never another path.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_BYTES = 64 * 2**20  # metadata text per chunk, about
MAX_NPZ_BYTES = 2**30  # an .npz's arrays, uncompressed (larger: a folder of .npy files)
ID_LINE = 1100  # bytes of an ids.txt line (ids are at most 256 characters, 4 bytes each)
ID_NPY_BYTES = 1024  # an ids array's item: U256 or S1024
METADATA_LINE = 2**20  # bytes of a metadata.jsonl line (compact metadata is far smaller)
PARQUET_METADATA_ROWS = 4096  # rows per Parquet batch when it has a metadata column
FLOATS = ("f2", "f4", "f8")


class SourceError(ValueError):
    """A bulk source that cannot be read at all (one-line reason)."""


class BadLine(str):
    """A text line that cannot be used, and why ("longer than … bytes", "not UTF-8"): its row
    is refused."""


# A chunk: ids (a BadLine: unusable), vectors [n, D] float32 (a NaN row: none usable), metadata
# texts (None: none; a BadLine: unusable).
Chunk = tuple[list[str], np.ndarray, list[str | None]]


@dataclass
class VectorSource:
    """Rows of precomputed vectors: ``chunks(size)`` reads them in order; ``close()`` when done."""

    name: str
    rows: int
    dim: int
    chunks: Callable[[int], Iterator[Chunk]]
    close: Callable[[], None]

    def __len__(self) -> int:
        return self.rows


def open_source(
    path: Path,
    name: str | None = None,
    follow_links: bool = True,
    dim: int | None = None,
    suffix: str | None = None,
) -> VectorSource:
    """The source at ``path`` (a folder, an ``.npz`` or a ``.parquet``); ``name`` is how
    messages call it (default: the path); ``dim``, the vectors' expected length, bounds what a
    Parquet file's row groups may hold before any is read; ``suffix`` tells a file's kind when
    ``path`` does not show it (``/proc/self/fd/N``)."""
    name = name or str(path)
    suffix = path.suffix if suffix is None else suffix
    try:
        if path.is_dir():
            source = _folder(path, name, follow_links)
        elif suffix == ".npz":
            source = _npz(path, name)
        elif suffix == ".parquet":
            source = _parquet(path, name, dim)
        else:
            raise SourceError(f"{name}: neither a folder with vectors.npy nor an .npz or "
                              ".parquet file")  # fmt: skip
    except SourceError:
        raise
    except Exception as exc:  # a parser's own error (tokenize, zlib, lzma, arrow…): the file's
        raise SourceError(f"{name}: cannot be read ({_reason(exc)})") from None
    if source.rows < 0:
        source.close()
        raise SourceError(f"{name}: a negative row count")
    return _guarded(source)


def _guarded(source: VectorSource) -> VectorSource:
    """The source whose chunks raise only SourceError, whatever fails while they are read."""
    inner = source.chunks

    def chunks(size: int) -> Iterator[Chunk]:
        try:
            yield from inner(size)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"{source.name}: cannot be read further ({_reason(exc)})") from None

    return VectorSource(source.name, source.rows, source.dim, chunks, source.close)


def _reason(exc: BaseException) -> str:
    """A library error's first line, without the path it names (a message may reach a client)."""
    if isinstance(exc, MemoryError):
        return "too large to read"
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(
        exc
    ).__name__
    return text.splitlines()[0][:200]


def _open(path: Path, name: str, follow_links: bool = True, dir_fd: int | None = None) -> int:
    """A descriptor of a regular file (not a FIFO, device or folder; not a link unless
    ``follow_links``), opened without blocking."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: O_NOFOLLOW met a link
            raise SourceError(f"{name}: a link (sources are read as plain files)") from None
        raise SourceError(f"{name}: cannot be opened ({_reason(exc)})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceError(f"{name}: not a regular file")
    return fd


# ---- .npy, read with pread -------------------------------------------------------------------
class NpyFile:
    """An ``.npy`` file's header, checked against the file, and its rows read with ``pread``."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name
        fh = os.fdopen(os.dup(fd), "rb")
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise SourceError(f"{name}: .npy format {version} is not read (1.0 or 2.0)")
            self.offset = fh.tell()
        except SourceError:
            raise
        except Exception as exc:  # ValueError, SyntaxError, tokenize.TokenError…
            raise SourceError(f"{name}: not an .npy file ({_reason(exc)})") from None
        finally:
            fh.close()
        if fortran and len(shape) > 1:
            raise SourceError(f"{name}: Fortran-ordered arrays are not read (save it C-ordered)")
        if dtype.hasobject or not shape or dtype.itemsize == 0 or min(shape) < 0:
            raise SourceError(f"{name}: not an array of plain values")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        need = self.offset + shape[0] * self.row_bytes
        if os.fstat(fd).st_size < need:
            raise SourceError(f"{name}: shorter than its header says ({shape} {dtype})")

    @property
    def rows(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        want = (stop - start) * self.row_bytes
        data = os.pread(self.fd, want, self.offset + start * self.row_bytes) if want else b""
        if len(data) != want:
            raise SourceError(f"{self.name}: changed while being read (rows {start}-{stop})")
        return np.frombuffer(data, self.dtype).reshape(stop - start, *self.shape[1:])


# ---- text lines --------------------------------------------------------------------------------
def count_lines(fd: int, most: int | None = None) -> int:
    """Lines of a text file (a last line without ``\\n`` counts), in constant memory; past
    ``most`` it stops (and answers ``most + 1``)."""
    lines, last, offset = 0, b"", 0
    while block := os.pread(fd, 1 << 20, offset):
        lines += block.count(b"\n")
        last, offset = block[-1:], offset + len(block)
        if most is not None and lines > most:
            return most + 1
    return lines + (1 if last not in (b"", b"\n") else 0)


def _count_lines(fd: int, rows: int, limit: int, name: str) -> int:
    """:func:`count_lines` of a file that should hold ``rows`` lines of at most ``limit`` bytes:
    one far larger than that (a sparse file, say) is refused before it is read."""
    size = os.fstat(fd).st_size
    if size > rows * (limit + 2) + 2:
        raise SourceError(f"{name}: {size} bytes for {rows} lines of at most {limit} bytes")
    return count_lines(fd, rows)


def _check_ids(shape: tuple, dtype: np.dtype, name: str) -> None:
    if len(shape) != 1 or dtype.kind not in "US":
        raise SourceError(f"{name}: ids must be a 1-D array of strings")
    if dtype.itemsize > ID_NPY_BYTES:
        raise SourceError(f"{name}: ids of {dtype} are longer than ids may be")


def read_lines(fd: int, limit: int) -> Iterator[str]:
    """Lines split at ``\\n`` only (a ``\\r`` before it dropped), decoded as UTF-8; a line
    longer than ``limit`` bytes (skipped unread) or not UTF-8 is a :class:`BadLine`."""
    fh = io.BufferedReader(io.FileIO(os.dup(fd), "rb"), 1 << 20)
    with fh:
        while line := fh.readline(limit + 1):
            if len(line) > limit and not line.endswith(b"\n"):
                while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield BadLine(f"longer than {limit} bytes")
                continue
            line = line.removesuffix(b"\n").removesuffix(b"\r")
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                yield BadLine("not UTF-8")


# ---- a folder ----------------------------------------------------------------------------------
def _folder(path: Path, name: str, follow_links: bool) -> VectorSource:
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds: list[int] = []

    def close() -> None:
        for fd in (*fds, dir_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def member(file: str) -> int:
        fd = _open(Path(file), f"{name}/{file}", follow_links, dir_fd)
        fds.append(fd)
        return fd

    def present(file: str) -> bool:
        return os.path.lexists(path / file)

    try:
        vectors = NpyFile(member("vectors.npy"), f"{name}/vectors.npy")
        _check_vectors(vectors.shape, vectors.dtype, name)
        if present("ids.txt"):
            id_fd, ids_npy = member("ids.txt"), None
            n_ids = _count_lines(id_fd, vectors.rows, ID_LINE, f"{name}/ids.txt")
        elif present("ids.npy"):
            ids_npy = NpyFile(member("ids.npy"), f"{name}/ids.npy")
            _check_ids(ids_npy.shape, ids_npy.dtype, f"{name}/ids.npy")
            n_ids = ids_npy.rows
        else:
            raise SourceError(f"{name}: no ids.txt or ids.npy beside vectors.npy")
        if n_ids != vectors.rows:
            raise SourceError(f"{name}: {vectors.rows} vectors but {n_ids} ids")
        meta_fd = member("metadata.jsonl") if present("metadata.jsonl") else None
        if meta_fd is not None:
            lines = _count_lines(meta_fd, n_ids, METADATA_LINE, f"{name}/metadata.jsonl")
            if lines != n_ids:
                raise SourceError(f"{name}: metadata.jsonl has {lines} lines for {n_ids} ids")
    except BaseException:
        close()
        raise

    def chunks(size: int) -> Iterator[Chunk]:
        id_lines = read_lines(id_fd, ID_LINE) if ids_npy is None else None
        meta_lines = read_lines(meta_fd, METADATA_LINE) if meta_fd is not None else None
        start = 0
        while start < vectors.rows:
            texts: list[str | None] = []
            used = 0
            while len(texts) < size and start + len(texts) < vectors.rows and used < CHUNK_BYTES:
                text = next(meta_lines, BadLine("missing")) if meta_lines is not None else None
                texts.append(text)
                used += len(text) if text is not None else 0
            stop = start + len(texts)
            if id_lines is not None:
                ids = [next(id_lines, BadLine("missing")) for _ in range(stop - start)]
            else:
                ids = _strings(ids_npy.read(start, stop))
            yield ids, _floats(vectors.read(start, stop)), texts
            start = stop

    return VectorSource(name, vectors.rows, int(vectors.shape[1]), chunks, close)


def _check_vectors(shape: tuple, dtype: np.dtype, name: str) -> None:
    if len(shape) != 2 or dtype.kind != "f" or f"f{dtype.itemsize}" not in FLOATS:
        raise SourceError(f"{name}: vectors must be [N, D] floats (16, 32 or 64 bits), not "
                          f"{shape} {dtype}")  # fmt: skip


def _floats(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def _strings(array: np.ndarray) -> list[str]:
    """Text from a numpy array of str or (UTF-8) bytes (a BadLine where the bytes are not)."""
    if array.dtype.kind != "S":
        return [str(x) for x in array.tolist()]
    out: list[str] = []
    for b in array.tolist():
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(BadLine("not UTF-8"))
    return out


# ---- .npz ----------------------------------------------------------------------------------------
def _npz(path: Path, name: str) -> VectorSource:
    fd = _open(path, name)
    with os.fdopen(fd, "rb") as fh:
        try:
            with zipfile.ZipFile(fh) as z:
                infos = {i.filename: i for i in z.infolist()}
                if any(i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
                       for i in infos.values()):  # fmt: skip
                    raise SourceError(f"{name}: only stored or deflated members are read (as "
                                      "numpy.savez and savez_compressed write them)")  # fmt: skip
                total = sum(i.file_size for i in infos.values())
                if total > MAX_NPZ_BYTES:
                    raise SourceError(f"{name}: {total} bytes of arrays; an .npz is read "
                                      f"whole, up to {MAX_NPZ_BYTES} (use a folder of .npy "
                                      "files)")  # fmt: skip
                for member in ("vectors.npy", "ids.npy"):
                    if member not in infos:
                        raise SourceError(f"{name}: not an .npz with vectors and ids (no "
                                          f"{member.removesuffix('.npy')})")  # fmt: skip
                arrays = {key.removesuffix(".npy"): _npz_member(z, infos[key], name)
                          for key in ("vectors.npy", "ids.npy", "metadata.npy")
                          if key in infos}  # fmt: skip
        except zipfile.BadZipFile as exc:
            why = _reason(exc)
            raise SourceError(f"{name}: not an .npz with vectors and ids ({why})") from None
    vectors, ids = arrays["vectors"], arrays["ids"]
    _check_vectors(vectors.shape, vectors.dtype, name)
    _check_ids(ids.shape, ids.dtype, name)
    if len(ids) != len(vectors):
        raise SourceError(f"{name}: {len(vectors)} vectors but {len(ids)} ids")
    texts = arrays.get("metadata")
    if texts is not None and (texts.ndim != 1 or texts.dtype.kind not in "US"):
        raise SourceError(f"{name}: metadata must be a 1-D array of JSON strings")
    if texts is not None and len(texts) != len(ids):
        raise SourceError(f"{name}: {len(texts)} metadata for {len(ids)} ids")

    def chunks(size: int) -> Iterator[Chunk]:
        for start in range(0, len(ids), size):
            stop = min(start + size, len(ids))
            meta = [None] * (stop - start)
            if texts is not None:
                meta = [None if m in ("", None) else m for m in _strings(texts[start:stop])]
            yield _strings(ids[start:stop]), _floats(vectors[start:stop]), meta

    return VectorSource(name, len(ids), int(vectors.shape[1]), chunks, lambda: None)


def _npz_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    """One array of an .npz, its header checked against the member's size before reading (an
    array's declared shape is what numpy allocates)."""
    with z.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)(fh)  # fmt: skip
        except Exception as exc:  # ValueError, SyntaxError, tokenize.TokenError, zlib.error…
            raise SourceError(f"{name}: {info.filename} is not an .npy ({_reason(exc)})") from None
    shape, _, dtype = header
    if dtype.hasobject or dtype.itemsize == 0 or min(shape, default=0) < 0:
        raise SourceError(f"{name}: {info.filename} is not an array of plain values")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
        raise SourceError(f"{name}: {info.filename} is shorter than its header says")
    with z.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


# ---- Parquet -----------------------------------------------------------------------------------
PARQUET_EXTRA = "Parquet needs pyarrow: pip install 'sdssl-service[parquet]'"


def _parquet(path: Path, name: str, expect: int | None) -> VectorSource:
    """Columns ``id`` (string), ``vector`` (a list of floats, one length throughout) and
    optionally ``metadata`` (JSON text or null), read a record batch at a time."""
    try:
        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"{name}: {PARQUET_EXTRA}") from None
    fh = os.fdopen(_open(path, name), "rb")
    try:
        pf, columns, dim = _parquet_schema(pa, pq, fh, name, expect)
    except SourceError:
        fh.close()
        raise
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        fh.close()
        raise SourceError(f"{name}: not a Parquet file we can read ({_reason(exc)})") from None

    def chunks(size: int) -> Iterator[Chunk]:
        rows = min(size, PARQUET_METADATA_ROWS) if "metadata" in columns else size
        for rb in pf.iter_batches(batch_size=rows, columns=columns):
            yield _parquet_rows(pa, rb, dim, len(columns) == 3)

    meta = pf.metadata  # rows as the row groups count them (the footer's total may lie)
    rows = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return VectorSource(name, rows, dim, chunks, fh.close)


def _parquet_schema(pa, pq, fh, name: str, expect: int | None):
    pf = pq.ParquetFile(fh)
    schema = pf.schema_arrow
    if len(set(schema.names)) != len(schema.names):
        raise SourceError(f"{name}: a column name appears twice")
    for column in ("id", "vector"):
        if column not in schema.names:
            raise SourceError(f"{name}: no column {column!r} (columns: id, vector, metadata)")
    vtype = schema.field("vector").type
    lists = (pa.types.is_list(vtype) or pa.types.is_large_list(vtype)
             or pa.types.is_fixed_size_list(vtype))  # fmt: skip
    if not lists or vtype.value_type not in (pa.float16(), pa.float32(), pa.float64()):
        raise SourceError(f"{name}: column 'vector' must be a list of floats, not {vtype}")
    if not _is_text(pa, schema.field("id").type):
        raise SourceError(f"{name}: column 'id' must be strings, not {schema.field('id').type}")
    columns = ["id", "vector"]
    if "metadata" in schema.names:
        mtype = schema.field("metadata").type
        if not (_is_text(pa, mtype) or pa.types.is_null(mtype)):
            raise SourceError(f"{name}: column 'metadata' must be JSON text, not {mtype}")
        columns.append("metadata")
    if pa.types.is_fixed_size_list(vtype):
        dim = vtype.list_size
        _check_row_groups(pf, dim, name)
    else:  # bounded by the expected length first, then the first rows' own length if it is one
        dim = expect if expect is not None else 0
        _check_row_groups(pf, max(dim, 1) if expect is not None else 2**20, name)
        first = next(pf.iter_batches(batch_size=16, columns=["vector"]), None)
        if first is not None:
            lengths = set(first.column(0).value_lengths().drop_null().to_pylist())
            if len(lengths) == 1 and (expect is None or lengths != {expect}):
                dim = lengths.pop()  # one length throughout, another than expected: say so
    return pf, columns, dim


def _check_row_groups(pf, dim: int, name: str) -> None:
    """Refuse, from the footer alone, row groups whose vectors hold more values than their rows
    can use (a compressed run of long lists would otherwise be decompressed whole)."""
    meta = pf.metadata
    leaf = next(i for i in range(meta.num_columns)
                if meta.schema.column(i).path.split(".")[0] == "vector")  # fmt: skip
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        if rg.column(leaf).num_values > rg.num_rows * (dim + 1):
            raise SourceError(f"{name}: row group {g} holds {rg.column(leaf).num_values} vector "
                              f"values for {rg.num_rows} rows of {dim}")  # fmt: skip


def _is_text(pa, t) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _parquet_rows(pa, rb, dim: int, with_metadata: bool) -> Chunk:
    """One record batch as a chunk: a row whose vector is null or of another length gets a NaN
    vector (refused alone, as not finite)."""
    n = rb.num_rows
    vec = rb.column(1)
    out = np.full((n, dim), np.nan, np.float32)
    if pa.types.is_fixed_size_list(vec.type):  # flatten(): the valid rows' values only
        values = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        good = np.asarray(vec.is_valid().to_numpy(zero_copy_only=False), bool)
        if good.any() and dim:
            out[good] = values.reshape(-1, dim)
    else:
        offsets = vec.offsets.to_numpy()
        values = vec.values.to_numpy(zero_copy_only=False).astype(np.float32)
        lengths = np.diff(offsets)
        valid = np.asarray(vec.is_valid().to_numpy(zero_copy_only=False), bool)
        good = valid & (lengths == dim)
        if good.any() and dim:
            index = offsets[:-1][good][:, None] + np.arange(dim)
            out[good] = values[index]
    ids = [BadLine("null") if x is None else x for x in _texts(pa, rb.column(0), ID_LINE)]
    meta = _texts(pa, rb.column(2), METADATA_LINE) if with_metadata else [None] * n
    return ids, out, meta


def _texts(pa, column, limit: int) -> list[str | None]:
    """A string column's rows (None: null), each checked for length before it is decoded: a
    BadLine past ``limit`` bytes or where it is not UTF-8. A dictionary's values are decoded
    once, however often its rows repeat them."""
    if pa.types.is_null(column.type):
        return [None] * len(column)
    if pa.types.is_dictionary(column.type):
        values = _texts(pa, column.dictionary, limit)
        return [None if i is None else values[i] for i in column.indices.to_pylist()]
    raw = column.cast(pa.large_binary())
    lengths = np.nan_to_num(pa.compute.binary_length(raw).to_numpy(zero_copy_only=False))
    too_long = lengths > limit
    if too_long.any():  # blank those rows before anything is copied out
        raw = pa.compute.if_else(pa.array(too_long), pa.scalar(b"", pa.large_binary()), raw)
    out: list[str | None] = []
    for i, value in enumerate(raw.to_pylist()):
        if too_long[i]:
            out.append(BadLine(f"longer than {limit} bytes"))
        elif value is None:
            out.append(None)
        else:
            try:
                out.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(BadLine("not UTF-8"))
    return out
