"""Where shards live: a local folder or ``s3://bucket/prefix``, behind one small interface.

S3 goes through s3fs. The endpoint comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (unset:
AWS itself); keys, session token, profile and region are left to botocore, which reads the usual
``AWS_*`` variables and files itself, so this module never holds a secret and nothing it logs can show
one (``describe`` prints the location and the endpoint only).

Writes are atomic: a reader never sees half a file under its final name. Locally a file is written
under a hidden temporary name beside its target and renamed; on S3 an object becomes visible only once
its upload completes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import fsspec

from dataio.errors import UnusableLocationError

TEMP_PREFIX = ".partial-"
"""Local temporary names start with this; ``Destination.remove_partial`` deletes leftovers of a killed run."""


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment (service-specific variable first, as botocore does)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> fsspec.AbstractFileSystem:
    """An ``s3fs.S3FileSystem`` for the endpoint in the environment.

    fsspec caches instances per argument set and per process (the cache is dropped in a forked child),
    so calling this often is cheap. ``region_name`` is deliberately not passed: with a custom endpoint it
    breaks bucket creation (see docs/platform.md); botocore takes the region from ``AWS_DEFAULT_REGION``.
    """
    import s3fs  # imported here: local packing and the training workers that read local shards skip it

    endpoint = s3_endpoint()
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})


def check_location(url: str, key: str, write: bool = False) -> None:
    """Refuse, in one line naming ``key``, a location that cannot be used: an S3 bucket that cannot be
    reached (no credentials, no endpoint, no bucket, no access), or a local folder that cannot be
    created or written (``write``). For checks before any worker starts."""
    if is_s3(url):
        import s3fs

        endpoint = s3_endpoint()
        # One quick try: a check must answer in seconds, not after botocore's and s3fs's retries.
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {}, skip_instance_cache=True,
                               config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 5})
        try:
            fs.ls(url[len("s3://"):].split("/")[0])
        except Exception as err:  # botocore and s3fs raise many kinds; each becomes one line
            raise UnusableLocationError(f"{key}={url}: {_s3_problem(err)} (endpoint {endpoint or 'AWS default'})") from None
        return
    if not write:
        return
    folder = Path(url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX):
            pass
    except OSError as err:
        raise UnusableLocationError(f"{key}={url}: not writable ({err.strerror or err})") from None


def _s3_problem(err: BaseException) -> str:
    chain = [err]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    names = {type(e).__name__ for e in chain}
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        return "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    if "EndpointConnectionError" in names or "ConnectTimeoutError" in names:
        return "cannot connect to the S3 endpoint: set AWS_ENDPOINT_URL for a store other than AWS"
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return "no such bucket"
    if any(isinstance(e, PermissionError) for e in chain):
        return "access denied"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def describe(url: str) -> str:
    """The location for logs and messages: the URL and, for S3, the endpoint; never credentials."""
    if is_s3(url):
        return f"{url} (endpoint {s3_endpoint() or 'AWS default'})"
    return str(Path(url).resolve())


def register_webdataset_s3() -> None:
    """Teach WebDataset (which has no ``s3://`` opener) to read ``s3://`` shard URLs through s3fs.

    ``webdataset.WebDataset("s3://bucket/prefix/train-{000000..000003}.tar")`` then streams each tar.
    Registering is idempotent; the filesystem is looked up per call, so forked data-loader workers get
    their own client instead of a copy of the parent's event loop.
    """
    from webdataset.gopen import gopen_schemes

    gopen_schemes["s3"] = _webdataset_open_s3


def _webdataset_open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: object):
    # WebDataset passes its own keywords (bufsize, handler options); s3fs reads ahead by itself.
    return s3_filesystem().open(url, mode)


class Destination:
    """A shard folder (local path or ``s3://bucket/prefix``): names inside it are plain file names."""

    def __init__(self, url: str) -> None:
        if not url:
            raise ValueError("data.shards: an empty shard location")
        self.url = url.rstrip("/") if is_s3(url) else str(Path(url))
        if is_s3(self.url) and not self.url[len("s3://"):].split("/")[0]:
            raise ValueError(f"data.shards: no bucket in {url!r}")

    @property
    def remote(self) -> bool:
        return is_s3(self.url)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return s3_filesystem() if self.remote else fsspec.filesystem("file")

    def uri(self, name: str) -> str:
        """The full location of ``name``: ``s3://bucket/prefix/name`` or a local path."""
        return f"{self.url}/{name}" if self.remote else str(Path(self.url) / name)

    def prepare(self) -> None:
        """Create the local folder (S3 needs nothing: prefixes exist once an object does)."""
        if not self.remote:
            Path(self.url).mkdir(parents=True, exist_ok=True)

    def names(self) -> set[str]:
        """Names of the files directly in the destination (one listing; empty when it does not exist)."""
        if not self.remote:
            folder = Path(self.url)
            return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
        self.fs.invalidate_cache(self.url)
        try:
            listing = self.fs.ls(self.url, detail=True)
        except FileNotFoundError:
            return set()
        return {entry["name"].rsplit("/", 1)[-1] for entry in listing if entry["type"] == "file"}

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self.uri(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` atomically."""
        if self.remote:
            self.fs.pipe_file(self.uri(name), data)
            return
        with self._local_temp(name) as temp:
            temp.write_bytes(data)

    def publish(self, local: Path, name: str) -> None:
        """Move the finished local file ``local`` to ``name`` atomically and durably (upload it for S3)."""
        if self.remote:
            self.fs.put_file(str(local), self.uri(name))
            local.unlink()
            return
        with self._local_temp(name) as temp:
            shutil.move(str(local), temp)

    def scratch(self) -> Path:
        """A local folder for files being built before ``publish``; the caller removes it.

        Local destinations build inside the destination (a hidden folder), so that publishing is a
        rename on one filesystem rather than a copy.
        """
        if self.remote:
            return Path(tempfile.mkdtemp(prefix="vid2vid-pack-"))
        folder = Path(self.url) / f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def remove_partial(self) -> list[str]:
        """Delete local temporaries a killed run left behind; returns their names. (S3: none exist.)"""
        if self.remote or not Path(self.url).is_dir():
            return []
        removed = []
        for path in Path(self.url).glob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path.name)
        return removed

    def _local_temp(self, name: str) -> "AtomicFile":
        return AtomicFile(Path(self.url) / name)


class AtomicFile:
    """``with AtomicFile(target) as temp:`` write ``temp``; on success it is fsynced, renamed to
    ``target``, and the rename flushed (the folder fsynced) before the ``with`` block returns; on an
    error the temp file is removed. The one atomic file write (shards, checkpoints, exports)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.temp = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{target.name}")

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        return self.temp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # Durable before visible, and visible before whatever the caller writes next: after a
            # power loss an .idx must never sit beside a tar whose bytes (or name) did not reach disk.
            fsync_path(self.temp)
            os.replace(self.temp, self.target)
            fsync_path(self.target.parent)
        else:
            self.temp.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
