"""HiCoPrompt's open vocabulary, written out as data: everyday objects, colours, materials, sizes,
patterns, parts (for sub-attributes), settings and styles.

Each object carries what the builder needs to keep scenes plausible: a size class (so "larger
than" and "on" go the right way), the materials it can be made of, the parts that can carry a
sub-attribute ("a mug with a blue handle"), and whether things can stand on it, go in it, sit
under it, or hang above others. Changing anything here changes the benchmark: bump
`vrl.bench.build.HICOPROMPT_VERSION` with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectType:
    name: str
    size: int  # 1 small (cup), 2 medium (lamp), 3 large (chair), 4 very large (table, sofa)
    materials: tuple[str, ...]
    parts: tuple[str, ...] = ()
    surface: bool = False  # other things can stand "on" it
    container: bool = False  # other things can be "in" it
    shelter: bool = False  # other things can be "under" it
    hangs: bool = False  # can be "above" others without standing on them


def _o(name, size, materials, parts=(), **flags) -> ObjectType:
    return ObjectType(name, size, tuple(materials.split()), tuple(parts), **flags)


# fmt: off
OBJECTS: tuple[ObjectType, ...] = (
    # tableware and kitchen
    _o("cup", 1, "ceramic glass plastic metal", ("handle", "rim")),
    _o("mug", 1, "ceramic metal glass", ("handle",)),
    _o("bowl", 1, "ceramic wooden glass metal", ("rim",), container=True),
    _o("plate", 1, "ceramic metal wooden", ("rim",), surface=True),
    _o("teapot", 1, "ceramic metal glass", ("lid", "spout", "handle")),
    _o("bottle", 1, "glass plastic metal", ("cap", "label")),
    _o("jar", 1, "glass ceramic plastic", ("lid", "label"), container=True),
    _o("vase", 2, "ceramic glass metal", ("flowers",), container=True),
    _o("candle", 1, "wax", ("holder",)),
    _o("tray", 2, "wooden metal plastic", ("handles",), surface=True),
    _o("basket", 2, "woven plastic metal", ("handle", "lining"), container=True),
    _o("kettle", 1, "metal plastic ceramic", ("handle", "lid")),
    # fruit and food
    _o("apple", 1, "", ("stem", "leaf")),
    _o("pear", 1, "", ("stem", "leaf")),
    _o("cake", 1, "", ("frosting", "candles"), surface=True),
    # furniture
    _o("chair", 3, "wooden metal plastic", ("legs", "cushion"), surface=True, shelter=True),
    _o("stool", 2, "wooden metal plastic", ("legs", "seat"), surface=True),
    _o("table", 4, "wooden metal glass stone", ("legs", "tablecloth"), surface=True, shelter=True),
    _o("desk", 4, "wooden metal", ("drawers", "legs"), surface=True, shelter=True),
    _o("bench", 4, "wooden metal stone", ("legs", "backrest"), surface=True, shelter=True),
    _o("sofa", 4, "leather fabric", ("cushions", "legs"), surface=True),
    _o("shelf", 3, "wooden metal glass", ("brackets",), surface=True),
    _o("box", 2, "wooden paper metal plastic", ("lid", "ribbon"), surface=True, container=True),
    _o("lamp", 2, "metal glass ceramic", ("shade", "base")),
    _o("rug", 4, "woven fabric", ("fringe", "border")),
    # objects of daily life
    _o("book", 1, "paper leather", ("cover", "bookmark")),
    _o("notebook", 1, "paper leather", ("cover", "spiral")),
    _o("backpack", 2, "fabric leather plastic", ("straps", "pocket")),
    _o("umbrella", 2, "fabric plastic", ("handle", "canopy")),
    _o("clock", 2, "wooden metal plastic", ("hands", "frame"), hangs=True),
    _o("painting", 2, "canvas", ("frame",), hangs=True),
    _o("mirror", 2, "glass", ("frame",), hangs=True),
    _o("guitar", 3, "wooden", ("strings", "neck")),
    _o("bicycle", 4, "metal", ("wheels", "saddle", "basket")),
    _o("hat", 1, "fabric woven leather", ("band", "brim")),
    _o("shoe", 1, "leather fabric", ("laces", "sole")),
    _o("suitcase", 3, "leather plastic fabric", ("handle", "wheels"), surface=True),
    # toys and play
    _o("ball", 1, "rubber leather plastic", ("stripes",)),
    _o("teddy bear", 2, "fabric", ("bow tie", "nose")),
    _o("toy car", 1, "plastic metal wooden", ("wheels", "windows")),
    _o("kite", 2, "paper fabric plastic", ("tail",), hangs=True),
    _o("balloon", 1, "rubber", ("string",), hangs=True),
    # plants and animals
    _o("potted plant", 2, "ceramic plastic", ("pot", "leaves")),
    _o("cat", 2, "", ("collar", "paws")),
    _o("dog", 3, "", ("collar", "ears")),
    _o("bird", 1, "", ("beak", "wings"), hangs=True),
)
# fmt: on

COLOURS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
    "gray", "teal",
)  # fmt: skip
# GenEval's ten colours come first, so a prompt from them can also be judged by GenEval's rule.

PATTERNS: tuple[str, ...] = ("striped", "polka-dot", "checkered", "spotted")
SIZES: tuple[str, ...] = ("small", "large")
SIZE_SHIFT = {"small": -1, "large": 1}
"""How a size word moves an object's size class, for the direction of "larger than"."""

# Parts take a colour, or one of these materials when the part is structural.
PART_MATERIALS: dict[str, tuple[str, ...]] = {
    "legs": ("wooden", "metal"),
    "frame": ("wooden", "metal", "golden"),
    "handle": ("wooden", "metal", "bamboo"),
    "base": ("wooden", "metal", "marble"),
    "wheels": ("rubber", "metal"),
    "lid": ("wooden", "metal", "glass"),
}

# (noun phrase stored in Scene.background, how a prompt places the scene there)
SETTINGS: tuple[tuple[str, str], ...] = (
    ("sunlit kitchen", "in a sunlit kitchen"),
    ("cozy living room", "in a cozy living room"),
    ("quiet classroom", "in a quiet classroom"),
    ("busy office", "in a busy office"),
    ("garden", "in a garden"),
    ("park", "in a park"),
    ("sandy beach", "on a sandy beach"),
    ("bedroom", "in a bedroom"),
    ("workshop", "in a workshop"),
    ("cafe terrace", "on a cafe terrace"),
    ("attic", "in a dusty attic"),
    ("snowy courtyard", "in a snowy courtyard"),
)
SETTING_PHRASES = dict(SETTINGS)

# (value stored in Scene.style, the head of a prompt in that style, how a sentence ends in it)
STYLES: tuple[tuple[str, str, str], ...] = (
    ("photorealistic", "A photorealistic image of", "in photorealistic detail"),
    ("watercolour", "A watercolour painting of", "as a watercolour painting"),
    ("oil painting", "An oil painting of", "as an oil painting"),
    ("cartoon", "A cartoon drawing of", "as a cartoon drawing"),
    ("3D render", "A 3D render of", "as a 3D render"),
    ("pencil sketch", "A pencil sketch of", "as a pencil sketch"),
)
STYLE_HEADS = {value: head for value, head, _ in STYLES}
STYLE_TAILS = {value: tail for value, _, tail in STYLES}

OBJECTS_BY_NAME = {o.name: o for o in OBJECTS}
