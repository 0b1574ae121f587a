"""Study storage given as a URI (s3://, gs://, file://, ...), reached through pyarrow.fs (no torch, no ray).

Why: on a cluster without a shared filesystem every node reaches the study through object storage. Tune
stores its experiment state and checkpoints there by itself; this module lets the rest of the harness
(manifest, lock, per-trial records, resume, the pretrained hand-off, status and report) do the same with
few, plain operations: read and write one whole file (a single PUT, so readers see all of it or none),
list, and copy a directory to a local folder, where the local-path code then runs unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Union

from .atomic import write_atomic


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def join(uri: str, *parts: str) -> str:
    """The URI of a path below uri; a query (s3://b/x?endpoint_override=...) stays at the end, where pyarrow
    reads it."""
    base, mark, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + mark + query


def with_endpoint(uri: str) -> str:
    """An s3:// URI with the endpoint users give by environment (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, as
    boto3 and the AWS CLI read them) written into its query, where pyarrow (which ignores those variables) and
    Ray Tune read it; a URI that names its endpoint_override already, or another scheme, is returned as it is."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not uri.startswith("s3://") or not endpoint or "endpoint_override=" in uri:
        return uri
    from urllib.parse import quote

    return f"{uri}{'&' if '?' in uri else '?'}endpoint_override={quote(endpoint, safe='')}"


def is_remote(location: Location) -> bool:
    """Object storage (s3://, gs://): what can refuse or stop answering; not a folder, not a file:// URI."""
    return is_uri(location) and _fs(str(location))[0].type_name != "local"


def reason(exc: BaseException) -> str:
    """An exception's first line, for a one-line message (its class name when it says nothing). Google Cloud's
    client wraps its cause ("Cannot open credentials file ...") in a paragraph of retry metadata: the cause."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    cause = text.partition("The underlying error message was: ")[2].partition(" error_info=")[0].strip()
    if "google::cloud::Status" in text and cause:
        text = f"no access token: {cause}" if "OAuth2 access token" in text else cause
    return text


def is_storage_error(exc: BaseException) -> bool:
    """What a storage that refuses or stops answering raises: an OSError, or (pyarrow's GCS client, on
    credentials it cannot use) a bare ArrowException; not its subclasses (ArrowInvalid is a ValueError: a bug)."""
    import pyarrow.lib

    return isinstance(exc, OSError) or type(exc) is pyarrow.lib.ArrowException


# Per scheme: where the credentials and the endpoint come from, and how a bucket is made.
HINTS = {
    "s3": ("the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the endpoint (AWS_ENDPOINT_URL or "
           "?endpoint_override=)", "aws s3 mb s3://{bucket}"),
    "gs": ("the credentials (GOOGLE_APPLICATION_CREDENTIALS, or gcloud auth application-default login)",
           "gcloud storage buckets create gs://{bucket}"),
}
CHECK_RETRY_S = 10  # gs://: how long the check retries (Google's client would, for minutes, without credentials)


def check_reachable(uri: str) -> None:
    """One line, before any work, when the storage cannot be used: a bucket that does not exist, credentials
    refused, an endpoint that does not answer (pyarrow would otherwise fail at the first write, minutes in)."""
    import pyarrow.fs

    from ..errors import UserError

    if not is_remote(uri):  # file://: no bucket, and a folder the study creates
        return
    scheme = uri.partition("://")[0]
    credentials, make_bucket = HINTS.get(scheme, ("the credentials and the endpoint", "create it"))
    probe = uri
    if scheme == "gs" and "retry_limit_seconds=" not in uri:
        probe = f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={CHECK_RETRY_S}"
    fs, path = _fs(probe)
    bucket = path.split("/", 1)[0]
    try:
        kind = fs.get_file_info(bucket).type
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        raise UserError(f"{uri}: the storage refused or did not answer ({reason(exc)}); check {credentials}") from None
    if kind == pyarrow.fs.FileType.NotFound:
        raise UserError(f"{uri}: the bucket {bucket} does not exist; create it first "
                        f"({make_bucket.format(bucket=bucket)}) or check its name")


def _fs(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, missing credentials, bad bucket name...
        from ..errors import UserError

        raise UserError(f"{uri}: pyarrow cannot open this storage ({exc}); check the URI and its credentials")


Location = Union[Path, str]  # a local path, or a URI string


def child(location: Location, *parts: str) -> Location:
    return join(str(location), *parts) if is_uri(location) else Path(location).joinpath(*parts)


def read_file(location: Location) -> str | None:
    """The file's text, or None when it does not exist."""
    if not is_uri(location):
        try:
            return Path(location).read_text()
        except FileNotFoundError:
            return None
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def write_file(location: Location, text: str) -> None:
    """Whole or nothing: temp file + rename locally, one PUT on object storage."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(location), text)
        return
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(text.encode())


def create_new(location: Location, text: str) -> bool:
    """Write the file only if it does not exist yet; False if it does. Locally one atomic link of a finished
    temp file, so of two processes that try at once exactly one succeeds and no reader sees it half written
    (an exclusive open where the filesystem has no hard links); object stores have no such create, so there a
    writer only checks first."""
    if is_uri(location):
        if exists(location):
            return False
        write_file(location, text)
        return True
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new{os.getpid()}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some FUSE and SMB mounts)
        try:
            with open(path, "x") as fh:
                fh.write(text)
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink()


def remove_file(location: Location) -> None:
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = _fs(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def remove_tree(location: Location) -> None:
    if not is_uri(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    fs, path = _fs(location)
    try:
        fs.delete_dir(path)
    except (FileNotFoundError, OSError):
        pass


def exists(location: Location) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def download(uri: str, local: Path, skip_dirs: tuple[str, ...] = ()) -> Path:
    """Copy the tree at uri into local (created); directories whose name starts with one of skip_dirs
    (e.g. "checkpoint_") are left out. Returns local."""
    import pyarrow.fs

    fs, root = _fs(uri)
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    kind = fs.get_file_info(root).type
    if kind == pyarrow.fs.FileType.NotFound:
        return local
    if kind == pyarrow.fs.FileType.File:  # a single file lands inside local
        with fs.open_input_stream(root) as src:
            (local / root.rsplit("/", 1)[-1]).write_bytes(src.read())
        return local
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        rel = info.path[len(root):].lstrip("/")
        if info.type != pyarrow.fs.FileType.File or any(p.startswith(skip_dirs) for p in rel.split("/")[:-1]):
            continue
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            dst.write(src.read())
    return local


def upload(local: Path, uri: str) -> None:
    """Copy the local tree (or one file) into uri, file by file; meta files last, so a reader that finds one
    (a checkpoint's meta.json) finds what it describes."""
    local = Path(local)
    files = [local] if local.is_file() else sorted((p for p in local.rglob("*") if p.is_file()),
                                                   key=lambda p: (p.name == "meta.json", str(p)))
    for path in files:
        fs, target = _fs(uri if path == local else join(uri, path.relative_to(local).as_posix()))
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(target) as fh:
            fh.write(path.read_bytes())


def mirror_dir(uri: str) -> Path:
    """A stable local folder for a URI study: status and report read (and the report writes) there."""
    base = Path(os.environ.get("ABLATION_CACHE", Path.home() / ".cache" / "ablation")) / "studies"
    tag = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:12]
    return base / f"{uri.partition('?')[0].rstrip('/').rsplit('/', 1)[-1]}-{tag}"


def local_copy(location: Location) -> Path:
    """A local folder holding the study: the path itself, or a fresh copy of a URI study without its
    checkpoints and Tune's logs (status and report only read the manifest and the trials' records)."""
    if not is_uri(location):
        return Path(location)
    local = mirror_dir(str(location))
    shutil.rmtree(local, ignore_errors=True)  # files deleted remotely must not linger here
    return download(str(location), local, skip_dirs=("checkpoints", "tune"))
