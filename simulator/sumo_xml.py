"""A fast, low-memory reader of SUMO ``.net.xml`` networks (plain or gzip-compressed).

``sumolib.net.readNet`` builds a rich object graph (shapes, back references, per-lane dicts):
136 s and 4.3 GB for a 100,000-junction grid, while the importer needs a few attributes of each
element. This reader makes one streaming pass and keeps compact frozen records: junction ids
are interned, equal junction logics and phases shared, junction internals dropped (but for
their lanes' speeds, which each connection keeps for the internal lane it takes).

Even expat, the C parser under ``iterparse``, needs 11 s for the 1.5 GB of such a grid before
Python sees an element, and 20 s with an empty handler per element. So a scanner for the XML
that SUMO writes reads the file first, a few megabytes at a time. Half of the file is junction
internals (internal edges, lanes and junctions, connections inside junctions): runs of them are
jumped over with string searches. The rest is read a run at a time where SUMO repeats itself:
an edge with its lanes (and a traffic light program with its phases) split at its quotes in one
go and read by a template for its layout; connections laid out alike matched by one pattern;
equal request rows of junctions read once. Anything outside that subset (a DOCTYPE, CDATA, text,
an unusual encoding, malformed markup) makes the scanner give up, and the file is read again
with expat, which reads it in full or reports the XML error.

Both feed one ``_Builder`` which knows SUMO's meaning: lane and connection permissions as SUMO's
``parseVehicleClasses`` reads them, and a connection's index in its junction's ``<request>``
rows as sumolib's ``Node.getLinkIndex`` counts it.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import itertools
import math
import operator
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import IO, NoReturn, TypeVar, cast
from xml.parsers import expat

from citybrain.models.errors import ValidationError

CAR_CLASS = "passenger"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 1 << 22
_MAX_PENDING_BYTES = 1 << 26  # a single tag longer than this is not SUMO's: expat reads it


@dataclass(frozen=True, slots=True)
class NetLane:
    """One lane of a road: what car-following and lane choice need, not its geometry."""

    id: str
    index: int
    speed_mps: float
    length_m: float
    allows_car: bool  # SUMO's allow/disallow rule applied to the vClass "passenger"
    end_heading: tuple[float, float]  # (dx, dy) of the last non-degenerate shape segment


@dataclass(frozen=True, slots=True)
class NetEdge:
    """A SUMO edge between two junctions, its lanes in SUMO index order (rightmost first)."""

    id: str
    from_junction: str
    to_junction: str
    function: str  # "" for a normal edge, else SUMO's function (crossing, walkingarea, connector)
    lanes: tuple[NetLane, ...]


@dataclass(frozen=True, slots=True)
class NetConnection:
    """A lane-to-lane movement, with what signal control needs to find and order it."""

    from_edge: str
    to_edge: str
    from_lane: int
    to_lane: int
    direction: str  # SUMO's dir: s, l, L, r, R, t, T or invalid
    tl: str  # the controlling traffic light, "" if none
    link_index: int  # index in the traffic light's phase states, -1 if none
    junction_index: int  # index in the junction's <request> rows (foes, response), -1 if none
    allows_car: bool  # the connection's own allow/disallow (True when it has none)
    via_speed_mps: float  # speed limit of its first internal lane (nan: none known)
    via_length_m: float  # its internal lanes end to end, stop line to next edge (nan: none)


@dataclass(frozen=True, slots=True)
class NetJunction:
    """A junction with its right-of-way logic as bit masks over its link indices."""

    id: str
    type: str
    x: float
    y: float
    foes: tuple[int, ...]  # foes[i] bit j set: links i and j conflict
    response: tuple[int, ...]  # response[i] bit j set: link i yields to link j


@dataclass(frozen=True, slots=True)
class NetPhase:
    """One phase of a signal program; ``state`` has one character per controlled link."""

    duration_s: float
    state: str
    min_duration_s: float | None
    max_duration_s: float | None


@dataclass(frozen=True, slots=True)
class NetProgram:
    """A traffic light program (``<tlLogic>``) in SUMO's terms."""

    tls_id: str
    program_id: str
    type: str
    offset_s: float
    phases: tuple[NetPhase, ...]


@dataclass(frozen=True)
class NetFile:
    """What the importer uses of a SUMO network. Left out: internal edges (but for their lanes'
    speeds, in the connections through them), internal junctions and connections that start
    inside a junction (their ``from`` begins with ':')."""

    path: Path
    edges: tuple[NetEdge, ...]
    junctions: Mapping[str, NetJunction]
    connections: tuple[NetConnection, ...]
    programs: Mapping[str, tuple[NetProgram, ...]]  # tls id -> its programs in file order


_T = TypeVar("_T")


def _fast_constructor(cls: type[_T]) -> Callable[..., _T]:
    """``cls(*values)`` for a frozen slotted dataclass, five times faster: frozen dataclasses
    set each field through ``object.__setattr__``; this is an unfrozen twin with the same
    slots whose instances take ``cls`` as their class once built."""

    def become_frozen(instance: object) -> None:
        object.__setattr__(instance, "__class__", cls)

    namespace = {
        "__annotations__": {field.name: field.type for field in fields(cls)},  # type: ignore[arg-type]
        "__post_init__": become_frozen,
    }
    return cast(Callable[..., _T], dataclass(slots=True)(type(f"_{cls.__name__}", (), namespace)))


_new_lane = _fast_constructor(NetLane)
_new_edge = _fast_constructor(NetEdge)
_new_connection = _fast_constructor(NetConnection)


def read_net_file(path: str | os.PathLike[str]) -> NetFile:
    """Read a SUMO ``.net.xml`` (gzip-compressed or not) in one streaming pass.

    Raises ``ValidationError`` naming the file, the element and the fault for a missing or
    unreadable file, malformed XML, a document that is not a SUMO network, a missing or
    invalid attribute, a reference to an unknown junction, edge or lane, and a signal program
    whose phases differ in their number of links.
    """
    source = Path(path)
    if not source.is_file():
        raise ValidationError(str(source), "no such file")
    # Millions of objects that live on, in no cycle: the collector's passes over them would
    # cost a third of the time and find nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _read_file(source)
    finally:
        if collecting:
            gc.enable()


def _read_file(source: Path) -> NetFile:
    try:
        try:
            builder = _read(source, _scan)
        except _UnsupportedError:
            builder = _read(source, _parse_with_expat)
    except (OSError, EOFError) as error:
        raise ValidationError(str(source), f"unreadable ({error})") from None
    return builder.result(source)


def allows_car(allow: str | None, disallow: str | None) -> bool:
    """SUMO's ``parseVehicleClasses`` for "passenger": a non-empty ``allow`` wins over
    ``disallow``, "all" means every class, and neither attribute means no restriction."""
    if allow:
        classes = allow.split()
        return CAR_CLASS in classes or "all" in classes
    if disallow:
        classes = disallow.split()
        return CAR_CLASS not in classes and "all" not in classes
    return True


# --- reading a file --------------------------------------------------------------------------


class _UnsupportedError(Exception):
    """The scanner met XML outside the subset it reads: the file goes to expat instead."""


class _InvalidError(Exception):
    """A SUMO element with a bad value; the reader adds the file and the line."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
        self.position = -1  # in the scanner's text, once known


def _read(source: Path, reader: Callable[[IO[bytes], _Builder, Path], None]) -> _Builder:
    builder = _Builder()
    with _open(source) as stream:
        reader(stream, builder, source)
    return builder


def _open(source: Path) -> IO[bytes]:
    with open(source, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    return cast(IO[bytes], gzip.open(source, "rb") if compressed else open(source, "rb"))


def _lines_before(source: Path, offset: int) -> int:
    """The number of the line at byte ``offset`` of the file: counted when an error needs it."""
    lines = 1
    with _open(source) as stream:
        while offset > 0:
            chunk = stream.read(min(offset, _CHUNK_BYTES))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            offset -= len(chunk)
    return lines


def _invalid_at(source: Path, line: int, error: _InvalidError) -> ValidationError:
    return ValidationError(f"{source}: line {line}: {error.where}", error.reason)


def _parse_with_expat(stream: IO[bytes], builder: _Builder, source: Path) -> None:
    """Any well-formed XML, at expat's pace; malformed XML is reported in expat's words."""
    parser = expat.ParserCreate()
    starts, ends = builder.starts, builder.ends

    def start(tag: str, attrs: dict[str, str]) -> None:
        if parser.StartElementHandler is start:  # the root
            builder.check_root(tag)
            parser.StartElementHandler = element
        element(tag, attrs)

    def element(tag: str, attrs: dict[str, str]) -> None:
        handler = starts.get(tag)
        if handler is not None:
            handler(tuple(map(attrs.get, _SCHEMAS[tag])))

    def end(tag: str) -> None:
        handler = ends.get(tag)
        if handler is not None:
            handler()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        while chunk := stream.read(_CHUNK_BYTES):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
    except expat.ExpatError as error:
        raise ValidationError(
            f"{source}: line {error.lineno}", f"malformed XML ({expat.ErrorString(error.code)})"
        ) from None
    except LookupError as error:  # an encoding Python does not know
        raise ValidationError(str(source), f"unreadable ({error})") from None
    except _InvalidError as error:
        raise _invalid_at(source, parser.CurrentLineNumber, error) from None


# --- the scanner for SUMO's XML ----------------------------------------------------------------

_SPACE = "[ \t\r\n]"
_NAME = r"[A-Za-z_:][\w.:-]*"
_COMMENT = "<!--(?:[^-]|-[^-])*-->"
# [^>] is twice as fast as [^<>] for sre; a '<' inside a tag fails the attribute checks.
_TAG = re.compile(rf"{_SPACE}*(?:<(/?)({_NAME})([^>]*)>|{_COMMENT})")
_EQUALS = f"{_SPACE}*={_SPACE}*"
_DECLARATION = re.compile(  # as the XML specification has it
    rf"""<\?xml{_SPACE}+version{_EQUALS}(?:"1\.[0-9]+"|'1\.[0-9]+')"""
    rf"""(?:{_SPACE}+encoding{_EQUALS}(?:"([A-Za-z][\w.-]*)"|'([A-Za-z][\w.-]*)'))?"""
    rf"""(?:{_SPACE}+standalone{_EQUALS}(?:"(?:yes|no)"|'(?:yes|no)'))?{_SPACE}*\?>"""
)
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_KEY = re.compile(rf"{_SPACE}+({_NAME}){_SPACE}*={_SPACE}*")
_TAIL = re.compile(rf"{_SPACE}*/?")
_ATTRIBUTES = re.compile(
    rf"""(?:{_SPACE}+{_NAME}{_SPACE}*={_SPACE}*(?:"[^"<]*"|'[^'<]*'))*{_TAIL.pattern}"""
)
_ATTRIBUTE = re.compile(rf"""({_NAME}){_SPACE}*={_SPACE}*(?:"([^"]*)"|'([^']*)')""")
_REFERENCE = re.compile(r"&(?:(amp|lt|gt|quot|apos)|#([0-9]+)|#x([0-9a-fA-F]+));|&")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_NORMALIZED = str.maketrans("\t\n\r", "   ")
# What a value split out of a tag may not hold, for the scanner to take it as it is: a
# reference, a '<' (malformed) or a tab or line break (which XML reads as a space).
_NOT_PLAIN = re.compile("[&<\t\n\r]")
_PLAIN_VALUE = '[^"&<\t\n\r]*'
_INTERNAL_LANE = re.compile(r'<lane id="([^"]*)"[^>]*? speed="([^"]*)"(?: length="([^"]*)")?')
_VIA = re.compile(r'via="([^"]*)"')
_FROM_LANE = re.compile(r'\sfrom="([^"]*)"|\sfromLane="([^"]*)"')
_INC_LANES = re.compile(r'\sincLanes="([^"]*)"')
_MAX_VIA_LANES = 16  # internal lanes one connection crosses (SUMO splits a turn in two at most)
_NO_WAY = (math.nan, math.nan)  # an internal lane's speed and length, neither known

_MAX_CACHED = 10_000  # entries per cache of layouts, templates and junction logics
# A run of junction internals starts at a tag with this marker (outside its values: it has no
# single quote) and ends at the first tag that is not one of them, found by its id as SUMO
# writes it (':' first).
_RUN_START = {
    "edge": ' function="internal"',
    "junction": ' type="internal"',
    "connection": ' from=":',
}
_RUN_END = {
    "edge": re.compile(r'<(?!lane |/edge>|edge id=":[^"<>]*" function="internal")'),
    "junction": re.compile(r'<(?!junction id=":[^"<>]*" type="internal")'),
    "connection": re.compile(r'<(?!connection from=":)'),
}
# Elements read whole, split at their quotes: their children are few and self-closing.
_FLAT = {"edge": "</edge>", "tlLogic": "</tlLogic>"}
_JUMPING = frozenset(_RUN_START) | frozenset(_FLAT)  # tags that may be read with what follows
_READ_ON = frozenset({"junction", "connection"})  # tags whose followers may be read at once

_Getter = Callable[[Sequence[str | None]], tuple[str | None, ...]]
# How to read a flat element split at its quotes: the start handlers of it and its children
# with the getters of their values, and the index of each one's tag (for error lines).
_Template = tuple[tuple[Callable[[tuple[str | None, ...]], None], _Getter, int], ...]


def _scan(stream: IO[bytes], builder: _Builder, source: Path) -> None:
    _Scanner(builder, source).run(stream)


class _Scanner:
    """Reads the XML subset SUMO writes, a chunk of whole tags at a time, and raises
    ``_UnsupportedError`` for anything else. Elements the builder ignores are only checked."""

    def __init__(self, builder: _Builder, source: Path) -> None:
        self.builder = builder
        self.source = source
        self.stack: list[str] = []
        self.root_seen = False
        self.offset = 0  # where in the (decompressed) file the current text starts
        self.layouts: dict[tuple[str, ...], tuple[str, ...] | None] = {}
        self.getters: dict[str, dict[str, _Getter | None]] = {tag: {} for tag in builder.starts}
        self.templates: dict[str, _Template | None] = {}
        self.logics: dict[str, _Logic] = {}  # a junction's request rows -> their masks
        self.skeleton: str | None = None  # of the last tag split at its quotes
        self.runs: dict[str, tuple[re.Pattern[str], _Getter]] = {}  # skeleton -> its pattern

    def run(self, stream: IO[bytes]) -> None:
        pending = b""
        prolog = True
        while True:
            chunk = stream.read(_CHUNK_BYTES)
            data = pending + chunk
            cut = data.rfind(b"<") if chunk else len(data)
            if chunk and cut <= 0:  # no whole tag yet
                if len(data) > _MAX_PENDING_BYTES:
                    raise _UnsupportedError
                pending = data
                continue
            try:
                text = str(memoryview(data)[:cut], "utf-8")
            except UnicodeDecodeError:
                raise _UnsupportedError from None
            pending = data[cut:]
            self.tags(text, self.prolog(text) if prolog else 0)
            prolog = False
            self.offset += cut
            if not chunk:
                break
        if not self.root_seen or self.stack:
            raise _UnsupportedError

    @staticmethod
    def prolog(text: str) -> int:
        """Where the tags start: past a byte order mark and the XML declaration, which may
        only declare UTF-8 (the scanner decodes nothing else)."""
        pos = 1 if text.startswith("\ufeff") else 0
        declaration = _DECLARATION.match(text, pos)
        if declaration is None:
            return pos
        encoding = declaration.group(1) or declaration.group(2)
        if encoding is not None and encoding.lower() not in _UTF8:
            raise _UnsupportedError
        return declaration.end()

    def tags(self, text: str, pos: int) -> None:
        try:
            while pos < len(text):
                pos = self.tags_until_jump(text, pos)
        except _InvalidError as error:
            line = _lines_before(self.source, self.offset) + text.count("\n", 0, error.position)
            raise _invalid_at(self.source, line, error) from None

    def tags_until_jump(self, text: str, pos: int) -> int:
        """Handle the tags from ``pos`` on; stop where the tag iterator must restart (past a
        run of junction internals, a flat element or a junction's request rows) or at the end
        of ``text``."""
        builder, stack = self.builder, self.stack
        starts, ends, values = builder.starts, builder.ends, self.values
        try:
            for match in _TAG.finditer(text, pos):
                if match.start() != pos:
                    raise _UnsupportedError  # text, CDATA or a DOCTYPE
                pos = match.end()
                closing, tag, raw = match.groups()
                if closing:
                    if raw or not stack or stack.pop() != tag:
                        raise _UnsupportedError
                    end = ends.get(tag)
                    if end is not None:
                        end()
                    continue
                if not stack:
                    self.open_root(tag)
                start = starts.get(tag)
                if start is None:
                    if tag is None:  # a comment
                        continue
                    self.check(raw)
                else:
                    jump = self.jump(text, match, tag, raw) if tag in _JUMPING else -1
                    if jump > 0:
                        return jump
                    start(values(tag, raw))
                    jump = self.read_on(text, pos, tag, raw) if tag in _READ_ON else -1
                    if jump > 0:
                        return jump
                if not raw.endswith("/"):
                    stack.append(tag)
                    continue
                end = ends.get(tag)
                if end is not None:
                    end()
        except _InvalidError as error:
            if error.position < 0:
                error.position = pos
            raise
        if pos < len(text) and not text[pos:].isspace():
            raise _UnsupportedError
        return len(text)

    def open_root(self, tag: str | None) -> None:
        if tag is None:  # a comment
            return
        if self.root_seen:
            raise _UnsupportedError  # a tag after the root: expat says so
        self.root_seen = True
        self.builder.check_root(tag)

    def jump(self, text: str, match: re.Match[str], tag: str, raw: str) -> int:
        """Past a run of junction internals or of flat elements that starts at ``match``, read
        at once; -1 to read the tag alone."""
        start = text.index("<", match.start())
        marker = _RUN_START.get(tag)
        if marker is not None and marker in raw and "'" not in raw:
            return self.run_end(text, start, tag)
        if tag in _FLAT and not raw.endswith("/"):
            return self.flat_elements(text, start, tag)
        return -1

    def read_on(self, text: str, pos: int, tag: str, raw: str) -> int:
        """Past what follows the tag just read, when it is read at once: a junction's request
        rows, or connections laid out as this one; -1 to go on tag by tag."""
        if tag == "junction" and not raw.endswith("/"):
            return self.junction_rows(text, pos)
        if tag == "connection" and raw.endswith("/"):
            return self.connection_run(text, pos)
        return -1

    def run_end(self, text: str, start: int, tag: str) -> int:
        """The end of the run of junction internals that starts at ``start`` if it is one the
        builder ignores, else -1. The run is checked by counting: each of its edges closed,
        each of its lanes and other tags self-closing."""
        if tag == "connection" and self.builder.counts_pedestrian_links:
            return -1
        found = _RUN_END[tag].search(text, start + 1)
        end = len(text) if found is None else found.start()
        if tag == "edge":  # edges that end in the run, each closed (lanes with children end it)
            end = text.rfind("</edge>", start, end)
            if end < 0:
                return -1
            end += len("</edge>")
            if text.count("<edge ", start, end) != text.count("</edge>", start, end):
                return -1
            self.builder.internal_lanes(text[start:end])
            return end
        if text.count("/>", start, end) != text.count("<", start, end):
            return -1
        if tag == "connection":
            self.builder.internal_vias(text[start:end])
        elif tag == "junction":
            self.builder.internal_junctions(text[start:end])
        return end

    def flat_elements(self, text: str, start: int, tag: str) -> int:
        """Past the flat elements with this ``tag`` that follow one another from ``start``, -1
        if the first one is not flat."""
        opener = f"<{tag} "
        end = self.flat_element(text, start, tag)
        while end > 0:
            following = text.find("<", end)
            if not text.startswith(opener, following) or not text[end:following].isspace():
                break
            next_end = self.flat_element(text, following, tag)
            if next_end < 0:
                break
            end = next_end
        return end

    def flat_element(self, text: str, start: int, tag: str) -> int:
        """Past the flat element that starts at ``start``, its tags handled; -1 to read it tag
        by tag. It is split at its quotes in one go, and read by the template of its layout:
        an edge and its lanes take one split instead of five tags."""
        closer = _FLAT[tag]
        end = text.find(closer, start)
        if end < 0:
            return -1
        end += len(closer)
        parts = text[start:end].split('"')
        if len(parts) % 2 == 0 or _NOT_PLAIN.search('"'.join(parts[1::2])):
            return -1
        skeleton = '"'.join(parts[0::2])  # the element without its values
        template = self.templates.get(skeleton, ())
        if template == ():
            template = self.template(text[start:end], skeleton)
        if template is None:
            return -1
        values: list[str | None] = parts[1::2]  # type: ignore[assignment]
        values.append(None)  # for the attributes a tag does not have
        for handler, getter, tag_index in template:
            try:
                handler(getter(values))
            except _InvalidError as error:
                error.position = self.tag_start(text, start, tag_index)
                raise
        self.builder.ends[tag]()
        return end

    @staticmethod
    def tag_start(text: str, start: int, tag_index: int) -> int:
        return next(itertools.islice(_TAG.finditer(text, start), tag_index, None)).end()

    def template(self, element: str, skeleton: str) -> _Template | None:
        """The template for ``element``'s layout; None unless it is a start tag, self-closing
        tags and its end tag, with their attributes in double quotes."""
        events = []
        offset = 0
        tags = list(_TAG.finditer(element))
        pos = 0
        for index, match in enumerate(tags):
            closing, tag, raw = match.groups()
            last = index == len(tags) - 1
            if match.start() != pos or tag is None or bool(closing) != last:
                return self.remember(skeleton, None)
            pos = match.end()
            if last:
                if raw or tag != tags[0].group(2):
                    return self.remember(skeleton, None)
                break
            if raw.endswith("/") == (index == 0):  # a start tag, then self-closing children
                return self.remember(skeleton, None)
            parts = raw.split('"')
            names = self.names(tuple(parts[0::2])) if len(parts) % 2 else None
            if names is None:
                return self.remember(skeleton, None)
            self.check_names(names)
            handler = self.builder.starts.get(tag)
            if handler is not None:
                where = [offset + names.index(n) if n in names else -1 for n in _SCHEMAS[tag]]
                events.append((handler, operator.itemgetter(*where), index))
            offset += len(names)
        if pos != len(element) or len(tags) < 2:
            return self.remember(skeleton, None)
        return self.remember(skeleton, tuple(events))

    @staticmethod
    def check_names(names: tuple[str, ...]) -> None:
        if len(set(names)) != len(names):
            raise _UnsupportedError  # a repeated attribute: expat says so

    def remember(self, skeleton: str, template: _Template | None) -> _Template | None:
        if len(self.templates) < _MAX_CACHED:
            self.templates[skeleton] = template
        return template

    def junction_rows(self, text: str, pos: int) -> int:
        """Past the end of the junction whose request rows start at ``pos``, -1 to read them
        tag by tag. Equal rows are read once: a grid repeats a few junction layouts."""
        close = text.find("</junction>", pos)
        if close < 0:
            return -1
        block = text[pos:close]
        logic = self.logics.get(block)
        if logic is None:
            rows = self.request_rows(block)
            if rows is None:
                return -1
            logic = self.builder.request_rows(rows)
            if len(self.logics) < _MAX_CACHED:
                self.logics[block] = logic
        else:
            self.builder.set_request_rows(*logic)
        self.builder.end_junction()
        return close + len("</junction>")

    def request_rows(self, block: str) -> list[_Values] | None:
        """The values of the <request> tags that make ``block``, None if it has others."""
        rows = []
        pos = 0
        for match in _TAG.finditer(block):
            closing, tag, raw = match.groups()
            if match.start() != pos or tag != "request" or closing or not raw.endswith("/"):
                return None
            pos = match.end()
            rows.append(self.values(tag, raw))
        return rows if block[pos:].isspace() or pos == len(block) else None

    def values(self, tag: str, raw: str) -> _Values:
        """The values of the attributes the builder reads from a ``tag``, in its order. A tag
        as SUMO writes it (its values in double quotes, without references) is split at its
        quotes, and the names between them are checked once per layout."""
        if "&" not in raw and "<" not in raw and raw.isprintable():
            parts = raw.split('"')
            if len(parts) % 2:
                skeleton = '"'.join(parts[0::2])  # the tag without its values
                getter = self.getters[tag].get(skeleton) or self.getter(tag, skeleton)
                self.skeleton = skeleton
                if getter is not None:
                    values: list[str | None] = parts[1::2]  # type: ignore[assignment]
                    values.append(None)  # for the attributes the tag does not have
                    return getter(values)
        self.skeleton = None
        attrs = _parse_attributes(raw)
        return tuple(map(attrs.get, _SCHEMAS[tag]))

    def connection_run(self, text: str, pos: int) -> int:
        """Past the connections from ``pos`` on that are laid out as the one just read (SUMO
        writes thousands in a row), each matched by one pattern; -1 if the next one is not."""
        skeleton = self.skeleton
        run = self.runs.get(skeleton) if skeleton else None
        if run is None:
            if not skeleton or self.getters["connection"].get(skeleton) is None:
                return -1
            run = self.run_pattern(skeleton)
        pattern, getter = run
        handler = self.builder.starts["connection"]
        match = pattern.match(text, pos)
        if match is None:
            return -1
        try:
            while match is not None:
                handler(getter((*match.groups(), None)))
                pos = match.end()
                match = pattern.match(text, pos)
        except _InvalidError as error:
            error.position = match.end() if match is not None else pos
            raise
        return pos

    def run_pattern(self, skeleton: str) -> tuple[re.Pattern[str], _Getter]:
        """A pattern for a whole connection tag with this skeleton, capturing the values the
        builder reads, and the getter that puts them in its order (None if absent)."""
        keys = skeleton.split('"')
        names = cast(tuple[str, ...], self.names(tuple(keys)))  # checked: it has a getter
        schema = _SCHEMAS["connection"]
        read = [name for name in names if name in schema]
        values = (
            f'"({_PLAIN_VALUE})"' if name in schema else f'"{_PLAIN_VALUE}"' for name in names
        )
        body = "".join(re.escape(key) + value for key, value in zip(keys, values, strict=False))
        pattern = re.compile(f"{_SPACE}*<connection{body}{re.escape(keys[-1])}>")
        getter = operator.itemgetter(*(read.index(n) if n in read else -1 for n in schema))
        if len(self.runs) < _MAX_CACHED:
            self.runs[skeleton] = (pattern, getter)
        return pattern, getter

    def getter(self, tag: str, skeleton: str) -> _Getter | None:
        names = self.names(tuple(skeleton.split('"')))
        if names is None:
            return None
        self.check_names(names)
        where = (names.index(name) if name in names else -1 for name in _SCHEMAS[tag])
        getter = operator.itemgetter(*where)
        if len(self.getters[tag]) < _MAX_CACHED:
            self.getters[tag][skeleton] = getter
        return getter

    def check(self, raw: str) -> None:
        """Check the attributes of a tag the builder does not read."""
        parts = raw.split('"')
        plain = "&" not in raw and "<" not in raw and raw.isprintable()
        names = self.names(tuple(parts[0::2])) if len(parts) % 2 and plain else None
        if names is None:
            _parse_attributes(raw)
        else:
            self.check_names(names)

    def names(self, keys: tuple[str, ...]) -> tuple[str, ...] | None:
        """The attribute names of a tag split at its double quotes, from the text between the
        values; None unless that is only names, '=' and spaces (then the tag is parsed)."""
        if keys in self.layouts:
            return self.layouts[keys]
        matches = [_KEY.fullmatch(key) for key in keys[:-1]]
        names = None
        if _TAIL.fullmatch(keys[-1]) is not None and None not in matches:
            names = tuple(match.group(1) for match in matches if match is not None)
        if len(self.layouts) < _MAX_CACHED:
            self.layouts[keys] = names
        return names


def _parse_attributes(raw: str) -> dict[str, str]:
    """A tag's attributes as the XML specification reads them (quotes, references, spaces)."""
    if _ATTRIBUTES.fullmatch(raw) is None:
        raise _UnsupportedError
    attrs: dict[str, str] = {}
    for name, double, single in _ATTRIBUTE.findall(raw):
        if name in attrs:
            raise _UnsupportedError
        value = (double or single).translate(_NORMALIZED)
        attrs[name] = _unescape(value) if "&" in value else value
    return attrs


def _unescape(value: str) -> str:
    def replace(match: re.Match[str]) -> str:
        entity, decimal, hexadecimal = match.groups()
        if entity:
            return _ENTITIES[entity]
        if decimal or hexadecimal:
            return chr(int(decimal, 10) if decimal else int(hexadecimal, 16))
        raise _UnsupportedError  # a bare '&' or an entity only a DTD could define

    try:
        return _REFERENCE.sub(replace, value)
    except (ValueError, OverflowError):
        raise _UnsupportedError from None


# --- what the elements mean --------------------------------------------------------------------

# The attributes the builder reads from each element, in the order its handler takes them.
_SCHEMAS: dict[str, tuple[str, ...]] = {
    "edge": ("id", "from", "to", "function"),
    "lane": ("id", "index", "speed", "length", "shape", "allow", "disallow"),
    "junction": ("id", "type", "x", "y", "incLanes"),
    "request": ("index", "foes", "response"),
    "tlLogic": ("id", "programID", "offset", "type"),
    "phase": ("duration", "state", "minDur", "maxDur"),
    "connection": (
        "from", "to", "fromLane", "toLane", "dir", "tl", "linkIndex", "allow", "disallow",
        "via",
    ),
}  # fmt: skip
_Values = tuple[str | None, ...]  # an element's attributes as its schema lists them
_Logic = tuple[tuple[int, ...], tuple[int, ...]]  # a junction's foes and response masks
_PEDESTRIAN = frozenset({"crossing", "walkingarea"})
_SMALL_INTS = {str(number): number for number in range(256)}  # lane and link indices, fast


_K = TypeVar("_K")
_V = TypeVar("_V")
_MAX_KEPT = 100_000  # entries per cache of values read once and shared


def _keep(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """``value``, kept in ``cache`` for the next time unless the cache is full."""
    if len(cache) < _MAX_KEPT:
        cache[key] = value
    return value


def _end_heading(shape: str) -> tuple[float, float]:
    """(dx, dy) of the last shape segment of non-zero length in the plane, (0, 0) if none."""
    for points in (shape.rsplit(None, 2)[-2:], shape.split()):  # most often the last one
        x, _, y = points[-1].partition(",")
        x1, y1 = float(x), float(y.partition(",")[0])
        for point in reversed(points[:-1]):
            x, _, y = point.partition(",")
            dx, dy = x1 - float(x), y1 - float(y.partition(",")[0])
            if dx or dy:
                if not (math.isfinite(dx) and math.isfinite(dy)):
                    raise ValueError(shape)
                return (dx, dy)
    return (0.0, 0.0)


def _index(text: str) -> int:
    """A lane index from a lane id's end, -1 if it is none."""
    return int(text) if text.isdecimal() else -1


def _required(text: str | None, where: str) -> str:
    if text is None:
        raise _InvalidError(where, "missing")
    return text


def _number(text: str | None, where: str, *, minimum: float | None = None) -> float:
    try:
        value = float(_required(text, where))
    except ValueError:
        raise _InvalidError(where, f"{text!r} is not a number") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise _InvalidError(where, f"{text!r} is not a finite number{bound}")
    return value


def _optional_number(text: str | None, where: str) -> float | None:
    return None if text is None else _number(text, where, minimum=0.0)


def _integer(text: str | None, where: str) -> int:
    try:
        value = int(_required(text, where))
    except ValueError:
        raise _InvalidError(where, f"{text!r} is not an integer") from None
    if value < 0:
        raise _InvalidError(where, f"{text!r} is negative")
    return value


@dataclass(slots=True)
class _OpenEdge:
    id: str
    from_junction: str
    to_junction: str
    function: str
    lanes: list[NetLane]


@dataclass(slots=True)
class _OpenJunction:
    id: str
    type: str
    x: float
    y: float
    inc_lanes: str
    foes: list[int]
    response: list[int]


@dataclass(slots=True)
class _OpenProgram:
    tls_id: str
    program_id: str
    type: str
    offset_s: float
    phases: list[NetPhase]


class _Builder:
    """SUMO's meaning of the elements: called with the values of each element it reads (per
    ``starts``) and at the end of some (``ends``), it checks them and keeps compact records.
    Each handler reads its element at once and, when that fails, a ``bad_*`` method finds
    what was wrong for the message."""

    def __init__(self) -> None:
        # edge id -> the edge, each lane's request rows so far (see ``count_link``), then
        # each lane's first request row in its junction (-1: none, until ``result``).
        self.edges: dict[str, tuple[NetEdge, list[int], list[int]]] = {}
        self.special_edges: dict[str, str] = {}  # crossing/walkingarea id -> its function
        self.junctions: dict[str, NetJunction] = {}
        self.inc_lanes: dict[str, str] = {}  # junction id -> its incLanes attribute
        self.programs: dict[str, list[NetProgram]] = {}
        self.connections: list[NetConnection] = []
        self.first_rows: list[list[int]] = []  # the first rows of each connection's edge
        self.counts_pedestrian_links = False  # there are walking areas
        self.edge: _OpenEdge | None = None
        self.internal = False  # the edge being read is a junction's internal one
        # internal lane id -> its speed (netconvert slows a turn for its curve) and length
        # (nan: not valid), for the connections through it (SUMO writes them after the
        # internal edges); the pairs are shared, as speeds are: millions of lanes, few values
        self.internal_ways: dict[str, tuple[float, float]] = {}
        self.ways: dict[tuple[str | None, str | None], tuple[float, float]] = {}
        # A turn that waits inside its junction crosses it on two internal lanes: the first
        # ends at an internal junction (which lists it in its incLanes), and a connection
        # inside the junction goes on from it to the second. Internal junctions come before
        # the connections, those inside junctions after the rest: the connections whose way
        # may go on are kept until the end, the others' length is known when they are read.
        self.waiting_lanes: set[str] = set()
        self.internal_next: dict[str, str] = {}
        self.going_on: list[tuple[NetConnection, str]] = []
        self.junction: _OpenJunction | None = None
        self.program: _OpenProgram | None = None
        # Values met again and again, read once and shared.
        self.speeds: dict[str | None, float] = {}
        self.masks: dict[str | None, int] = {}
        self.phases: dict[_Values, NetPhase] = {}
        self.logics: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.permissions: dict[tuple[str | None, str | None], bool] = {}
        self.starts: dict[str, Callable[[_Values], None]] = {
            "edge": self.start_edge,
            "lane": self.start_lane,
            "junction": self.start_junction,
            "request": self.start_request,
            "tlLogic": self.start_program,
            "phase": self.start_phase,
            "connection": self.start_connection,
        }
        self.ends: dict[str, Callable[[], None]] = {
            "edge": self.end_edge,
            "junction": self.end_junction,
            "tlLogic": self.end_program,
        }

    @staticmethod
    def check_root(tag: str) -> None:
        if tag != "net":
            raise _InvalidError(f"<{tag}>", "not a SUMO network (the root element is not <net>)")

    def allows_car(self, allow: str | None, disallow: str | None) -> bool:
        key = (allow, disallow)
        allowed = self.permissions.get(key)
        if allowed is None:
            allowed = _keep(self.permissions, key, allows_car(allow, disallow))
        return allowed

    # --- edges and lanes ---

    def start_edge(self, values: _Values) -> None:
        edge_id, from_id, to_id, function = values
        self.internal = function == "internal"
        if self.internal:
            self.edge = None
            return
        if edge_id is not None and function in _PEDESTRIAN:
            self.special_edges[edge_id] = function
            self.counts_pedestrian_links |= function == "walkingarea"
            # These have no from/to: like sumolib, take the junction from the id (":J_w0").
            junction = edge_id[1 : edge_id.rfind("_")]
            from_id, to_id = from_id or junction, to_id or junction
        if edge_id is None or from_id is None or to_id is None:
            self.bad_edge(values)
        # Junction ids are interned: each edge then shares them with its junctions.
        ends = sys.intern(from_id), sys.intern(to_id)
        self.edge = _OpenEdge(edge_id, *ends, function or "", [])

    @staticmethod
    def bad_edge(values: _Values) -> NoReturn:
        edge_id, from_id, to_id, _ = values
        element = f"<edge id={_required(edge_id, '<edge> id')!r}>"
        _required(from_id, f"{element} from")
        _required(to_id, f"{element} to")
        raise AssertionError("an edge refused without a reason")

    def start_lane(self, values: _Values) -> None:
        edge = self.edge
        if edge is None:
            if self.internal:
                self.internal_lane(values[0], values[2], values[3])
            return
        lane_id, index, speed, length, shape, allow, disallow = values
        try:
            lane = _new_lane(
                lane_id,
                _SMALL_INTS[index] if index in _SMALL_INTS else int(index),  # type: ignore[arg-type]
                self.speeds.get(speed) or self.speed(speed),
                float(length),  # type: ignore[arg-type]
                True if allow is None and disallow is None else self.allows_car(allow, disallow),
                _end_heading(shape) if shape else (0.0, 0.0),
            )
        except (TypeError, ValueError, IndexError):
            self.bad_lane(values, edge)
        if lane_id is None or lane.index != len(edge.lanes) or not 0.0 <= lane.length_m < math.inf:
            self.bad_lane(values, edge)
        edge.lanes.append(lane)

    def internal_lane(self, lane_id: str | None, speed: str | None, length: str | None) -> None:
        """Keep an internal lane's speed and length (either nan where not valid: the turns
        through it are then taken as fast as their links, or as long as the node coordinates
        say)."""
        if lane_id is not None:
            way = self.ways.get((speed, length)) or self.way(speed, length)
            self.internal_ways[lane_id] = way

    def way(self, speed: str | None, length: str | None) -> tuple[float, float]:
        pair = (math.nan, math.nan)
        with contextlib.suppress(TypeError, ValueError):
            pair = (self.speeds.get(speed) or self.speed(speed), math.nan)
        with contextlib.suppress(TypeError, ValueError):
            metres = float(length)  # type: ignore[arg-type]
            if 0.0 <= metres < math.inf:
                pair = (pair[0], metres)
        return _keep(self.ways, (speed, length), pair)

    def internal_lanes(self, run: str) -> None:
        """Keep the speeds and lengths of the internal lanes in a run of internal edges read
        at once."""
        ways, internal_ways = self.ways, self.internal_ways
        for lane_id, speed, length in _INTERNAL_LANE.findall(run):
            lane = _unescape(lane_id) if "&" in lane_id else lane_id
            internal_ways[lane] = ways.get((speed, length or None)) or self.way(
                speed, length or None
            )

    def internal_via(self, from_id: str, from_lane: int | str, via: str) -> None:
        """Keep the internal lane a connection inside a junction goes on to."""
        self.internal_next[f"{from_id}_{from_lane}"] = via.split(" ", 1)[0]

    def internal_vias(self, run: str) -> None:
        """Keep the lanes the connections in a run of them inside junctions go on to (few
        have a ``via``: found by it, then their element read)."""
        for found in _VIA.finditer(run):
            start = run.rfind("<", 0, found.start())
            attributes = dict.fromkeys(("from", "fromLane"), "")
            for from_id, from_lane in _FROM_LANE.findall(run, start, found.start()):
                attributes["from" if from_id else "fromLane"] = from_id or from_lane
            from_id, via = attributes["from"], found.group(1)
            if "&" in from_id or "&" in via:
                from_id, via = _unescape(from_id), _unescape(via)
            self.internal_via(from_id, attributes["fromLane"], via)

    def internal_junction(self, inc_lanes: str | None) -> None:
        """Keep the internal lanes that end at an internal junction: a way through them may
        go on."""
        for lane in (inc_lanes or "").split():
            if lane.startswith(":"):
                self.waiting_lanes.add(lane)

    def internal_junctions(self, run: str) -> None:
        """The same, for a run of internal junctions read at once."""
        for inc_lanes in _INC_LANES.findall(run):
            self.internal_junction(_unescape(inc_lanes) if "&" in inc_lanes else inc_lanes)

    def speed(self, text: str | None) -> float:
        speed = float(text)  # type: ignore[arg-type]
        if not 0.0 < speed < math.inf:
            raise ValueError(text)
        return _keep(self.speeds, text, speed)

    @staticmethod
    def bad_lane(values: _Values, edge: _OpenEdge) -> NoReturn:
        lane_id, index, speed, length, shape, _, _ = values
        element = f"<lane id={lane_id!r}> of <edge id={edge.id!r}>"
        _required(lane_id, f"{element} id")
        expected = len(edge.lanes)
        if _integer(index, f"{element} index") != expected:
            reason = f"{index} is out of order: expected {expected}"
            raise _InvalidError(f"{element} index", reason)
        if _number(speed, f"{element} speed", minimum=0.0) == 0.0:
            raise _InvalidError(f"{element} speed", "must be positive")
        _number(length, f"{element} length", minimum=0.0)
        raise _InvalidError(f"{element} shape", f"{shape!r:.80} is not a list of finite x,y")

    def end_edge(self) -> None:
        edge = self.edge
        if edge is None:
            return
        if edge.id in self.edges:
            raise _InvalidError(f"<edge id={edge.id!r}> id", "is not unique")
        lanes = tuple(edge.lanes)
        done = _new_edge(edge.id, edge.from_junction, edge.to_junction, edge.function, lanes)
        self.edges[edge.id] = (done, [0] * len(lanes), [-1] * len(lanes))
        self.edge = None

    # --- junctions ---

    def start_junction(self, values: _Values) -> None:
        junction_id, kind, x, y, inc_lanes = values
        if kind == "internal":
            self.internal_junction(inc_lanes)
            self.junction = None
            return
        try:
            junction = _OpenJunction(
                sys.intern(junction_id),  # type: ignore[arg-type]
                sys.intern(kind),  # type: ignore[arg-type]
                float(x),  # type: ignore[arg-type]
                float(y),  # type: ignore[arg-type]
                inc_lanes,  # type: ignore[arg-type]
                [],
                [],
            )
        except (TypeError, ValueError):
            self.bad_junction(values)
        if inc_lanes is None or not (math.isfinite(junction.x) and math.isfinite(junction.y)):
            self.bad_junction(values)
        self.junction = junction

    @staticmethod
    def bad_junction(values: _Values) -> NoReturn:
        junction_id, kind, x, y, inc_lanes = values
        element = f"<junction id={_required(junction_id, '<junction> id')!r}>"
        _required(kind, f"{element} type")
        _number(x, f"{element} x")
        _number(y, f"{element} y")
        _required(inc_lanes, f"{element} incLanes")
        raise AssertionError("a junction refused without a reason")

    def start_request(self, values: _Values) -> None:
        junction = self.junction
        if junction is None:
            return
        index, foes, response = values
        try:
            row = int(index)  # type: ignore[arg-type]
            foes_mask = self.masks.get(foes) or self.mask(foes)
            response_mask = self.masks.get(response) or self.mask(response)
        except (TypeError, ValueError):
            self.bad_request(values, junction)
        if row != len(junction.foes):
            self.bad_request(values, junction)
        junction.foes.append(foes_mask)
        junction.response.append(response_mask)

    def mask(self, bits: str | None) -> int:
        """A request bit string as a mask: its last character is link 0, so bit j is link j."""
        if not bits or bits.strip("01"):
            raise ValueError(bits)
        return _keep(self.masks, bits, int(bits, 2))

    @staticmethod
    def bad_request(values: _Values, junction: _OpenJunction) -> NoReturn:
        index, _, _ = values
        element = f"<request index={index!r}> of <junction id={junction.id!r}>"
        expected = len(junction.foes)
        if _integer(index, f"{element} index") != expected:
            reason = f"{index} is out of order: expected {expected}"
            raise _InvalidError(f"{element} index", reason)
        for name, bits in zip(("foes", "response"), values[1:], strict=True):
            text = _required(bits, f"{element} {name}")
            if not text or text.strip("01"):
                raise _InvalidError(f"{element} {name}", f"{text!r:.80} is not a string of 0 and 1")
        raise AssertionError("a request refused without a reason")

    def request_rows(self, rows: list[_Values]) -> _Logic:
        """All request rows of the open junction at once: its foes and response masks."""
        for values in rows:
            self.start_request(values)
        junction = self.junction
        return ((), ()) if junction is None else (tuple(junction.foes), tuple(junction.response))

    def set_request_rows(self, foes: tuple[int, ...], response: tuple[int, ...]) -> None:
        """The request rows of the open junction, as ``request_rows`` gave them before."""
        if self.junction is not None:
            self.junction.foes = list(foes)
            self.junction.response = list(response)

    def end_junction(self) -> None:
        junction = self.junction
        if junction is None:
            return
        if junction.id in self.junctions:
            raise _InvalidError(f"<junction id={junction.id!r}> id", "is not unique")
        foes, response = tuple(junction.foes), tuple(junction.response)
        self.inc_lanes[junction.id] = junction.inc_lanes
        self.junctions[junction.id] = NetJunction(
            junction.id,
            junction.type,
            junction.x,
            junction.y,
            self.logics.setdefault(foes, foes),
            self.logics.setdefault(response, response),
        )
        self.junction = None

    # --- traffic light programs ---

    def start_program(self, values: _Values) -> None:
        tls_id, program_id, offset, kind = values
        tls_id = sys.intern(_required(tls_id, "<tlLogic> id"))
        element = f"<tlLogic id={tls_id!r}>"
        self.program = _OpenProgram(
            tls_id,
            _required(program_id, f"{element} programID"),
            kind or "static",
            0.0 if offset is None else _number(offset, f"{element} offset"),
            [],
        )

    def start_phase(self, values: _Values) -> None:
        program = self.program
        if program is None:
            return
        phase = self.phases.get(values) or self.phase(values, program)
        if program.phases and len(phase.state) != len(program.phases[0].state):
            element = self.phase_element(program)
            reason = f"has {len(phase.state)} links, the first phase {len(program.phases[0].state)}"
            raise _InvalidError(f"{element} state", reason)
        program.phases.append(phase)

    def phase(self, values: _Values, program: _OpenProgram) -> NetPhase:
        duration, state, min_duration, max_duration = values
        element = self.phase_element(program)
        state = _required(state, f"{element} state")
        if not state:
            raise _InvalidError(f"{element} state", "is empty")
        phase = NetPhase(
            _number(duration, f"{element} duration", minimum=0.0),
            state,
            _optional_number(min_duration, f"{element} minDur"),
            _optional_number(max_duration, f"{element} maxDur"),
        )
        return _keep(self.phases, values, phase)

    @staticmethod
    def phase_element(program: _OpenProgram) -> str:
        return (
            f"<phase> {len(program.phases)} of "
            f"<tlLogic id={program.tls_id!r} programID={program.program_id!r}>"
        )

    def end_program(self) -> None:
        program = self.program
        if program is None:
            return
        phases = tuple(program.phases)
        if not phases:
            element = f"<tlLogic id={program.tls_id!r} programID={program.program_id!r}>"
            raise _InvalidError(element, "has no phase")
        done = NetProgram(
            program.tls_id, program.program_id, program.type, program.offset_s, phases
        )
        self.programs.setdefault(program.tls_id, []).append(done)
        self.program = None

    # --- connections ---

    def start_connection(self, values: _Values) -> None:
        from_id, to_id, from_lane, to_lane, direction, tl, link, allow, disallow, via = values
        try:
            from_index = _SMALL_INTS[from_lane] if from_lane in _SMALL_INTS else int(from_lane)  # type: ignore[arg-type]
            to_index = _SMALL_INTS[to_lane] if to_lane in _SMALL_INTS else int(to_lane)  # type: ignore[arg-type]
            link_index = (
                -1 if link is None else _SMALL_INTS[link] if link in _SMALL_INTS else int(link)
            )
            internal = from_id.startswith(":")  # type: ignore[union-attr]
        except (TypeError, ValueError, AttributeError):
            self.bad_connection(values)
        if internal:
            self.count_pedestrian_link(from_id, from_index, to_id)  # type: ignore[arg-type]
            if via:
                self.internal_via(from_id, from_index, via)  # type: ignore[arg-type]
            return
        from_entry, to_entry = self.edges.get(from_id), self.edges.get(to_id)  # type: ignore[arg-type]
        if from_entry is None or to_entry is None or direction is None or link_index < -1:
            self.bad_connection(values)
        from_edge, rows, first_rows = from_entry
        to_edge = to_entry[0]
        if not (0 <= from_index < len(from_edge.lanes) and 0 <= to_index < len(to_edge.lanes)):
            self.bad_connection(values)
        lane = via.split(" ", 1)[0] if via else ""
        connection = _new_connection(
            from_edge.id,
            to_edge.id,
            from_index,
            to_index,
            sys.intern(direction),
            "" if tl is None else sys.intern(tl),
            link_index,
            self.count_link(rows, from_index, to_edge),  # the junction index: see ``result``
            True if allow is None and disallow is None else self.allows_car(allow, disallow),
            *self.internal_ways.get(lane, _NO_WAY),
        )
        self.connections.append(connection)
        if lane in self.waiting_lanes:
            self.going_on.append((connection, lane))
        self.first_rows.append(first_rows)

    def count_link(self, rows: list[int], lane: int, to_edge: NetEdge) -> int:
        """The connection's rank among its lane's request rows, -1 if it has none. As sumolib's
        ``Node.getLinkIndex`` counts: a lane's connections have consecutive rows in file order,
        but for those into a walking area (a sidewalk entering its junction is no link)."""
        if self.counts_pedestrian_links and to_edge.function == "walkingarea":
            return -1
        rank = rows[lane]
        rows[lane] = rank + 1
        return rank

    def bad_connection(self, values: _Values) -> NoReturn:
        from_id, to_id, from_lane, to_lane, direction, _, link, _, _, _ = values
        from_id = _required(from_id, "<connection> from")
        to_id = _required(to_id, f"<connection from={from_id!r}> to")
        element = f"<connection from={from_id!r} to={to_id!r}>"
        for side, edge_id, lane in (("from", from_id, from_lane), ("to", to_id, to_lane)):
            index = _integer(lane, f"{element} {side}Lane")
            entry = self.edges.get(edge_id)
            if from_id.startswith(":"):
                continue
            if entry is None:
                raise _InvalidError(f"{element} {side}", f"unknown edge {edge_id!r}")
            if index >= len(entry[0].lanes):
                reason = f"edge {edge_id!r} has no lane {index}"
                raise _InvalidError(f"{element} {side}Lane", reason)
        _required(direction, f"{element} dir")
        _integer(link, f"{element} linkIndex")
        raise AssertionError("a connection refused without a reason")

    def count_pedestrian_link(self, from_id: str, from_lane: int, to_id: str | None) -> None:
        """A walking area's connection onto a crossing is a request row of its junction (whose
        ``incLanes`` lists the walking area's lane): counted, not kept."""
        special = self.special_edges
        if special.get(from_id) == "walkingarea" and special.get(to_id or "") == "crossing":
            rows = self.edges[from_id][1]
            if from_lane < len(rows):
                rows[from_lane] += 1

    # --- the result ---

    def result(self, source: Path) -> NetFile:
        edges = tuple(edge for edge, _, _ in self.edges.values())
        ends = {edge.from_junction for edge in edges}
        ends.update(edge.to_junction for edge in edges)
        if not ends <= self.junctions.keys():
            self.unknown_junction(source, edges)
        return NetFile(
            path=source,
            edges=edges,
            junctions=MappingProxyType(self.junctions),
            connections=self.finished_connections(),
            programs=MappingProxyType({k: tuple(v) for k, v in self.programs.items()}),
        )

    def unknown_junction(self, source: Path, edges: tuple[NetEdge, ...]) -> NoReturn:
        for edge in edges:
            for side, junction in (("from", edge.from_junction), ("to", edge.to_junction)):
                if junction not in self.junctions:
                    where = f"{source}: <edge id={edge.id!r}> {side}"
                    raise ValidationError(where, f"unknown junction {junction!r}")
        raise AssertionError("an unknown junction not found again")

    def set_first_rows(self) -> None:
        """Each incoming lane's first request row: a junction's rows follow its ``incLanes``
        in order, each lane's connections one after the other."""
        edges = self.edges
        for inc_lanes in self.inc_lanes.values():
            row = 0
            for lane_id in inc_lanes.split():
                edge_id, _, index = lane_id.rpartition("_")
                entry = edges.get(edge_id)
                lane = _SMALL_INTS[index] if index in _SMALL_INTS else _index(index)
                if entry is not None and 0 <= lane < len(entry[1]):
                    entry[2][lane] = row
                    row += entry[1][lane]

    def finished_connections(self) -> tuple[NetConnection, ...]:
        """The connections, with their index in their junction's request rows and the whole
        length of a way through the junction that goes on (set once, before they are handed
        out: frozen from then on)."""
        self.set_first_rows()
        for connection, first_rows in zip(self.connections, self.first_rows, strict=True):
            rank = connection.junction_index
            first = first_rows[connection.from_lane]
            if rank >= 0:
                object.__setattr__(connection, "junction_index", -1 if first < 0 else first + rank)
        for connection, lane in self.going_on:
            object.__setattr__(connection, "via_length_m", self.via_length(lane))
        return tuple(self.connections)

    def via_length(self, lane: str) -> float:
        """The internal lanes from ``lane`` on, end to end (nan if one's length is unknown or
        they do not end within ``_MAX_VIA_LANES``)."""
        total = 0.0
        for _ in range(_MAX_VIA_LANES):
            length = self.internal_ways.get(lane, _NO_WAY)[1]
            if math.isnan(length):
                return math.nan  # the one nan: connections compare equal across readers
            total += length
            following = self.internal_next.get(lane)
            if following is None:
                return total
            lane = following
        return math.nan
