"""Class -> colour tables of colour-coded label masks: named palettes and table files.

Many datasets ship their labels as RGB images in which each class is painted in
a fixed colour (CamVid, the Dubai aerial set, most annotation-tool exports). A
:class:`ClassTable` says which colour(s) encode which class and which colours
are ignored; :mod:`kseg.data.colors` converts masks with it.

A table comes from a named palette (``voc``, ``camvid``, ``camvid11``, ``dubai``,
``binary``) or a file, see :func:`load_class_table` for the accepted JSON / CSV /
TXT formats. ``binary`` (black = 0, white = 1) converts 0/255 grey masks.
"""

import csv
import json
import os
import re

import numpy as np

from kseg.config import IGNORE_INDEX
from kseg.data.layout import IGNORE_NAME
from kseg.data.palette import IGNORE_COLOR, voc_palette
from kseg.errors import DataError, unknown_name

# --------------------------------------------------------------------------------------
# Named palettes
# --------------------------------------------------------------------------------------

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The 32 classes of the original CamVid release (label_colors.txt), in its order.
# "Void" (0, 0, 0) is the ignore colour.
CAMVID_COLORS = (
    ("Animal", (64, 128, 64)), ("Archway", (192, 0, 128)), ("Bicyclist", (0, 128, 192)),
    ("Bridge", (0, 128, 64)), ("Building", (128, 0, 0)), ("Car", (64, 0, 128)),
    ("CartLuggagePram", (64, 0, 192)), ("Child", (192, 128, 64)), ("Column_Pole", (192, 192, 128)),
    ("Fence", (64, 64, 128)), ("LaneMkgsDriv", (128, 0, 192)), ("LaneMkgsNonDriv", (192, 0, 64)),
    ("Misc_Text", (128, 128, 64)), ("MotorcycleScooter", (192, 0, 192)), ("OtherMoving", (128, 64, 64)),
    ("ParkingBlock", (64, 192, 128)), ("Pedestrian", (64, 64, 0)), ("Road", (128, 64, 128)),
    ("RoadShoulder", (128, 128, 192)), ("Sidewalk", (0, 0, 192)), ("SignSymbol", (192, 128, 128)),
    ("Sky", (128, 128, 128)), ("SUVPickupTruck", (64, 128, 192)), ("TrafficCone", (0, 0, 64)),
    ("TrafficLight", (0, 64, 64)), ("Train", (192, 64, 128)), ("Tree", (128, 128, 0)),
    ("Truck_Bus", (192, 128, 192)), ("Tunnel", (64, 0, 64)), ("VegetationMisc", (192, 192, 0)),
    ("Wall", (64, 192, 0)),
)  # fmt: skip

# The 11-class CamVid used by SegNet and most benchmarks, with the colours these
# classes have in the original release; (0, 0, 0) "Void" is ignored. Colours of the
# other 21 original classes are not merged into these 11 (they become ignore and are
# reported): give your own table if your masks use a specific grouping.
CAMVID11_COLORS = (
    ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)), ("Pavement", (0, 0, 192)), ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)), ("Fence", (64, 64, 128)), ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
)  # fmt: skip


# The Dubai aerial imagery masks (Humans in the Loop), with the colours the masks actually
# use (the dataset's own classes.json lists different, wrong ones); a few black pixels
# are unannotated and ignored.
DUBAI_COLORS = (
    ("Building", (0x3C, 0x10, 0x98)), ("Land", (0x84, 0x29, 0xF6)), ("Road", (0x6E, 0xC1, 0xE4)),
    ("Vegetation", (0xFE, 0xDD, 0x3A)), ("Water", (0xE2, 0xA9, 0x29)), ("Unlabeled", (0x9B, 0x9B, 0x9B)),
)  # fmt: skip


def rgb_code(rgb):
    """``(r, g, b)`` -> the integer ``0xRRGGBB``."""
    r, g, b = (int(c) for c in rgb)
    return (r << 16) | (g << 8) | b


def code_rgb(code):
    """The integer ``0xRRGGBB`` -> ``(r, g, b)``."""
    code = int(code)
    return ((code >> 16) & 255, (code >> 8) & 255, code & 255)


def color_hex(rgb):
    """``(r, g, b)`` -> ``"#RRGGBB"``."""
    return "#%02X%02X%02X" % tuple(int(c) for c in rgb)


def parse_color(value, where="colour"):
    """Parse ``"#RRGGBB"``, ``"RRGGBB"``, ``"r,g,b"``, ``"r g b"`` or ``[r, g, b]`` into a tuple."""
    v = value
    if isinstance(v, str):
        s = v.strip()
        m = re.fullmatch(r"#?([0-9a-fA-F]{6})", s)
        if m:
            return code_rgb(int(m.group(1), 16))
        v = [p for p in re.split(r"[,\s;]+", s.strip("()[]")) if p]
    try:
        rgb = tuple(int(round(float(c))) for c in v)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or any(c < 0 or c > 255 for c in rgb):
        raise DataError(f"{where}: {value!r} is not a colour; use '#RRGGBB' or [r, g, b] with values 0-255")
    return rgb


class ClassTable:
    """Class names and the colours that encode them in a colour-coded mask.

    Args:
        names: class names; position = class id.
        colors: one entry per class: an ``(r, g, b)`` tuple, a list of tuples (all
            map to that class; the first is used for display), or ``None`` (the
            class has no colour in the masks).
        ignore_colors: colours mapped to ``ignore_index`` without being counted as unknown.
        ignore_index: the value written for ignored and unknown colours.
        source: where the table came from (for messages).
    """

    def __init__(self, names, colors, ignore_colors=(), ignore_index=IGNORE_INDEX, source="table"):
        self.names = [str(n) for n in names]
        if len(colors) != len(self.names):
            raise ValueError("names and colors must have the same length")
        self.colors = []
        for c in colors:
            if c is None:
                self.colors.append([])
            elif len(c) == 3 and all(np.isscalar(x) for x in c):
                self.colors.append([tuple(int(x) for x in c)])
            else:
                self.colors.append([tuple(int(x) for x in cc) for cc in c])
        self.ignore_colors = [tuple(int(x) for x in c) for c in ignore_colors]
        self.ignore_index = int(ignore_index)
        self.source = source
        if self.ignore_index < len(self.names):
            raise DataError(
                f"{source}: the ignore value {self.ignore_index} is a class id ({len(self.names)} classes); "
                "use an ignore value >= the number of classes"
            )
        seen = {}
        for cid, cols in enumerate(self.colors):
            for c in cols:
                if c in seen and seen[c] != cid:
                    raise DataError(
                        f"{source}: colour {color_hex(c)} is given to both {self.names[seen[c]]!r} and "
                        f"{self.names[cid]!r}; give each colour to one class"
                    )
                seen[c] = cid
        for c in self.ignore_colors:
            if c in seen:
                raise DataError(
                    f"{source}: colour {color_hex(c)} is both class {self.names[seen[c]]!r} and ignored; pick one"
                )
        self._lookup = None

    @property
    def n_classes(self):
        return len(self.names)

    def palette(self):
        """``(n_classes, 3)`` uint8 display colours (VOC colours for classes without one)."""
        pal = voc_palette(max(self.n_classes, 1))[: self.n_classes].copy()
        for cid, cols in enumerate(self.colors):
            if cols:
                pal[cid] = cols[0]
        return pal

    def ignore_color(self):
        """The colour drawn for ignored pixels: the first ignore colour, else ``palette.IGNORE_COLOR``."""
        return self.ignore_colors[0] if self.ignore_colors else tuple(IGNORE_COLOR)

    def lookup(self):
        """Sorted colour codes and the value each maps to (class id or ignore)."""
        if self._lookup is None:
            pairs = [(rgb_code(c), cid) for cid, cols in enumerate(self.colors) for c in cols]
            pairs += [(rgb_code(c), self.ignore_index) for c in self.ignore_colors]
            pairs.sort()
            self._lookup = (
                np.array([p[0] for p in pairs], dtype=np.int64),
                np.array([p[1] for p in pairs], dtype=np.int64),
            )
        return self._lookup

    def to_dict(self):
        """A JSON-able description, readable again by :func:`load_class_table`."""
        return {
            "classes": [
                {"name": n, "color": [color_hex(c) for c in cols] if len(cols) > 1 else (color_hex(cols[0]) if cols else None)}
                for n, cols in zip(self.names, self.colors)
            ],
            "ignore_colors": [color_hex(c) for c in self.ignore_colors],
            "ignore_index": self.ignore_index,
        }

    def __repr__(self):
        return f"ClassTable({self.n_classes} classes from {self.source})"

def named_table(name, ignore_index=IGNORE_INDEX):
    """A built-in table: ``voc`` (21 classes), ``camvid`` (32-class original), ``camvid11``,
    ``dubai`` (6 classes, black ignored), ``binary``.

    ``binary`` maps black to 0 and white to 1 (0/255 masks; with a tolerance of 221
    every grey level goes to the nearer of the two, i.e. a threshold at 128).
    """
    key = _table_key(name)
    if key in ("voc", "pascalvoc", "pascal"):
        pal = voc_palette(len(VOC_CLASSES))
        return ClassTable(VOC_CLASSES, [tuple(c) for c in pal], [IGNORE_COLOR], ignore_index, source="voc")
    if key == "camvid":
        return ClassTable(
            [n for n, _ in CAMVID_COLORS], [c for _, c in CAMVID_COLORS], [(0, 0, 0)], ignore_index, source="camvid"
        )
    if key == "camvid11":
        return ClassTable(
            [n for n, _ in CAMVID11_COLORS], [c for _, c in CAMVID11_COLORS], [(0, 0, 0)], ignore_index,
            source="camvid11",
        )
    if key == "dubai":
        return ClassTable(
            [n for n, _ in DUBAI_COLORS], [c for _, c in DUBAI_COLORS], [(0, 0, 0)], ignore_index, source="dubai"
        )
    if key == "binary":
        return ClassTable(["background", "foreground"], [(0, 0, 0), (255, 255, 255)], (), ignore_index, source="binary")
    raise unknown_name("palette", name, NAMED_TABLES)


NAMED_TABLES = ("voc", "camvid", "camvid11", "dubai", "binary")
_NAMED_KEYS = ("voc", "pascalvoc", "pascal", "camvid", "camvid11", "dubai", "binary")


def _table_key(name):
    return name.lower().replace("-", "").replace("_", "")


_NAME_KEYS = ("name", "title", "label", "class")
_COLOR_KEYS = ("color", "colour", "rgb", "hex")


def _table_from_entries(entries, source, ignore_index, ignore_colors=()):
    """Build a table from ``[(name, colours, id or None, is_ignore), ...]``."""
    ignore = [c for (_, cols, _, ign) in entries if ign for c in cols] + list(ignore_colors)
    classes = [e for e in entries if not e[3]]
    explicit = [e for e in classes if e[2] is not None]
    if explicit and len(explicit) != len(classes):
        raise DataError(f"{source}: give an id to every class or to none")
    if explicit:
        n = max(int(e[2]) for e in classes) + 1
        names, colors = [None] * n, [None] * n
        for name, cols, cid, _ in classes:
            cid = int(cid)
            if cid < 0:
                raise DataError(f"{source}: class {name!r} has a negative id {cid}")
            if names[cid] is not None and names[cid] != name:
                raise DataError(f"{source}: id {cid} is given to both {names[cid]!r} and {name!r}")
            names[cid] = name
            colors[cid] = (colors[cid] or []) + list(cols)
        names = [nm if nm is not None else f"class_{i}" for i, nm in enumerate(names)]
    else:
        names, colors, index = [], [], {}
        for name, cols, _, _ in classes:
            if name in index:  # the same name twice: extra colours for that class
                colors[index[name]] += list(cols)
                continue
            index[name] = len(names)
            names.append(name)
            colors.append(list(cols))
    if not names:
        raise DataError(f"{source}: the table lists no classes")
    return ClassTable(names, [c or None for c in colors], ignore, ignore_index, source=source)


def _entry_from_dict(d, source, i):
    name = next((d[k] for k in _NAME_KEYS if k in d), None)
    col = next((d[k] for k in _COLOR_KEYS if k in d), None)
    is_ignore = bool(d.get("ignore", False)) or name == IGNORE_NAME
    if name is None and not is_ignore:
        raise DataError(f"{source}: entry {i} has no name (expected one of {', '.join(_NAME_KEYS)})")
    cols = _colors_of(col, f"{source}: entry {name!r}")
    if not cols and is_ignore:
        raise DataError(f"{source}: ignore entry {i} has no colour")
    return (str(name) if name is not None else IGNORE_NAME, cols, d.get("id"), is_ignore)


def _colors_of(col, where):
    if col is None:
        return []
    if isinstance(col, (list, tuple)) and col and isinstance(col[0], (list, tuple, str)):
        return [parse_color(c, where) for c in col]
    return [parse_color(col, where)]


def table_from_json(obj, source="table", ignore_index=None):
    """Build a table from a parsed JSON object (see :func:`load_class_table`)."""
    ign_idx = ignore_index
    ignore_colors = []
    if isinstance(obj, dict) and ("classes" in obj or "palette" in obj):
        if ign_idx is None and obj.get("ignore_index") is not None:
            ign_idx = int(obj["ignore_index"])
        ignore_colors = _colors_of(obj.get("ignore_colors") or obj.get("ignore_color"), f"{source}: ignore_colors")
        classes = obj.get("classes")
        if classes is None:
            raise DataError(f"{source}: has 'palette' but no 'classes'")
        if classes and isinstance(classes[0], dict):
            entries = [_entry_from_dict(d, source, i) for i, d in enumerate(classes)]
        else:
            pal = obj.get("palette")
            if pal is None:
                raise DataError(f"{source}: 'classes' are names but there is no 'palette' with their colours")
            if len(pal) < len(classes):
                raise DataError(f"{source}: {len(classes)} classes but only {len(pal)} palette colours")
            entries = [
                (str(n), _colors_of(c, f"{source}: class {n!r}"), None, n == IGNORE_NAME)
                for n, c in zip(classes, pal)
            ]
    elif isinstance(obj, list):
        entries = [_entry_from_dict(d, source, i) if isinstance(d, dict) else None for i, d in enumerate(obj)]
        if any(e is None for e in entries):
            raise DataError(f"{source}: a list table must hold objects like {{\"name\": ..., \"color\": ...}}")
    elif isinstance(obj, dict):
        entries = []
        for name, col in obj.items():
            if isinstance(col, dict):
                d = dict(col)
                d.setdefault("name", name)
                entries.append(_entry_from_dict(d, source, name))
            else:
                entries.append((str(name), _colors_of(col, f"{source}: class {name!r}"), None, name == IGNORE_NAME))
    else:
        raise DataError(f"{source}: not a class table; see README.md (Dataset tools) for the formats")
    return _table_from_entries(entries, source, IGNORE_INDEX if ign_idx is None else ign_idx, ignore_colors)


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def table_from_csv(path, ignore_index=None):
    """Read a CSV table: ``name,r,g,b`` / ``name,#hex`` / ``id,name,r,g,b`` rows, header optional."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the CSV table is empty")
    header = None
    if not any(_is_number(c) or c.startswith("#") for c in rows[0][1:]):
        header = [c.lower() for c in rows[0]]
        rows = rows[1:]
    entries = []
    for ln, r in enumerate(rows, start=2 if header else 1):
        where = f"{path} line {ln}"
        if header:
            d = dict(zip(header, r))
            name = next((d[k] for k in _NAME_KEYS if k in d), None)
            if all(k in d for k in ("r", "g", "b")):
                cols = [parse_color([d["r"], d["g"], d["b"]], where)]
            else:
                col = next((d[k] for k in _COLOR_KEYS if k in d), None)
                cols = _colors_of(col, where) if col else []
            cid = d.get("id")
            cid = int(cid) if cid not in (None, "") else None
            ign = str(d.get("ignore", "")).lower() in ("1", "true", "yes") or name == IGNORE_NAME
        elif len(r) == 4:
            name, cols, cid, ign = r[0], [parse_color(r[1:4], where)], None, r[0] == IGNORE_NAME
        elif len(r) == 2:
            name, cols, cid, ign = r[0], [parse_color(r[1], where)], None, r[0] == IGNORE_NAME
        elif len(r) == 5:
            name, cols, cid, ign = r[1], [parse_color(r[2:5], where)], int(r[0]), r[1] == IGNORE_NAME
        else:
            raise DataError(f"{where}: expected name,r,g,b or name,#RRGGBB or id,name,r,g,b; got {','.join(r)}")
        if name is None:
            raise DataError(f"{where}: no class name column (name/title/label/class)")
        entries.append((name, cols, None if ign else cid, ign))
    return _table_from_entries(entries, path, IGNORE_INDEX if ignore_index is None else ignore_index)


def table_from_txt(path, ignore_index=None):
    """Read a CamVid-style ``label_colors.txt``: ``r g b name`` per line (``#`` comments allowed)."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, start=1):
            s = line.strip()
            if not s or (s.startswith("#") and not re.match(r"#[0-9a-fA-F]{6}\s", s)):
                continue  # blank line or comment
            m = re.fullmatch(r"(\d+)\s+(\d+)\s+(\d+)\s+(.+)", s) or re.fullmatch(r"(#[0-9a-fA-F]{6})\s+(.+)", s)
            if not m:
                raise DataError(f"{path} line {ln}: expected 'r g b name' or '#RRGGBB name', got {s!r}")
            if len(m.groups()) == 4:
                cols, name = [parse_color(m.groups()[:3], f"{path} line {ln}")], m.group(4).strip()
            else:
                cols, name = [parse_color(m.group(1), f"{path} line {ln}")], m.group(2).strip()
            entries.append((name, cols, None, name == IGNORE_NAME))
    return _table_from_entries(entries, path, IGNORE_INDEX if ignore_index is None else ignore_index)


def load_class_table(spec, ignore_index=None):
    """Load a :class:`ClassTable` from a named palette or a file.

    ``spec`` is ``voc``, ``camvid``, ``camvid11``, ``dubai``, ``binary``, or a path to:

    * JSON, one of
        - ``{"classes": ["bg", "road"], "palette": [[0, 0, 0], "#804080"], "ignore_colors": ["#000001"]}``
          (a kseg ``dataset.json`` is such a table);
        - ``{"classes": [{"name": "road", "color": "#804080"}, {"title": "sky", "color": [128, 128, 128], "id": 2},
          {"name": "void", "color": "#000000", "ignore": true}]}`` (``title`` as in Supervisely's
          ``classes.json``; ``color`` may be a list of colours; ``id`` optional but all-or-none);
        - ``{"road": "#804080", "sky": [128, 128, 128], "__ignore__": ["#000000"]}`` (ids in order);
    * CSV with a header (``name,r,g,b`` as CamVid's ``class_dict.csv``, or ``name,color``,
      optional ``id`` and ``ignore`` columns) or without (``name,r,g,b`` / ``name,#hex`` /
      ``id,name,r,g,b``);
    * TXT: ``r g b name`` per line (CamVid ``label_colors.txt``).

    A class named ``__ignore__`` (labelme's convention) or marked ``"ignore": true`` maps
    its colours to the ignore value.
    """
    if spec is None:
        raise DataError(f"no class table given; pass --table with a JSON/CSV file or one of: {', '.join(NAMED_TABLES)}")
    spec = str(spec)
    if _table_key(spec) in _NAMED_KEYS:
        # a named palette, even where a file or folder of that name exists here (e.g. the
        # output folder "dubai"): a table file needs a .json/.csv/.txt name, which no name has
        return named_table(spec, IGNORE_INDEX if ignore_index is None else ignore_index)
    if not os.path.exists(spec):
        raise DataError(
            f"class table {spec!r} is neither a file nor a named palette ({', '.join(NAMED_TABLES)}); check the path"
        )
    ext = os.path.splitext(spec)[1].lower()
    if ext == ".json":
        try:
            with open(spec, encoding="utf-8") as f:
                obj = json.load(f)
        except ValueError as e:
            raise DataError(f"class table {spec} is not valid JSON ({e}); fix the file") from None
        return table_from_json(obj, source=spec, ignore_index=ignore_index)
    if ext == ".csv":
        return table_from_csv(spec, ignore_index)
    if ext == ".txt":
        return table_from_txt(spec, ignore_index)
    raise DataError(f"class table {spec} must be a .json, .csv or .txt file")
