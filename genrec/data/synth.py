"""A seeded synthetic catalogue and user log: the project's embedded demo dataset.

The generator is built so that every later stage has structure to find:

* **Catalogue.** Categories are two-level ("Audio > Headphones"); each has its own product
  roles (each with a noun, adjectives, features and materials), uses and brands, so an item's
  title and description are informative of its category (text-based tokenizers can recover
  it) while brand, model number and the drawn attributes keep every item's text different.
* **Tastes.** Each user prefers 1-3 categories with Dirichlet weights and occasionally explores.
* **Popularity.** Within a category, items follow a Zipf-like law (``popularity_skew``) with a
  small floor, so the default dataset survives 5-core filtering intact.
* **Sequential habits.** Every item has 2-4 follow-up items ("complements": camera -> lens ->
  tripod), mostly in its own category and preferring the next product role; every item is
  the follow-up of at least one other item. With probability ``p_seq`` a user's next item is
  a follow-up of the previous one, otherwise it is drawn from the user's tastes. A first-order transition model therefore beats popularity by far, which
  is what sequential recommenders (SASRec, the LLM) should learn.

Users never repeat an item; timestamps are integer seconds increasing per user; some
interactions carry a templated review mentioning the item's category and features.

:func:`generate` returns ``(interactions, items)`` frames; :func:`write` writes them, in the
project's generic CSV format (``interactions.csv``, ``items.csv``) plus ``synth.json``, into a
folder atomically. Same config -> byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from genrec.errors import GenrecError

#: Files :func:`write` produces; a folder holding only these plus a valid marker is "made by synth".
INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"
MARKER_FILE = "synth.json"
SYNTH_FILES = (INTERACTIONS_FILE, ITEMS_FILE, MARKER_FILE)
GENERATOR_NAME = "genrec.data.synth"
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Role:
    """One product role of a category: its noun and the words that describe such a product."""

    noun: str
    adjectives: tuple[str, ...]
    features: tuple[str, ...]
    materials: tuple[str, ...]


@dataclass(frozen=True)
class CategorySpec:
    """Vocabulary of one leaf category. ``roles`` are in complement order (camera -> lens -> tripod)."""

    top: str
    sub: str
    kind: str  # singular label used in sentences ("camera gear")
    roles: tuple[Role, ...]
    uses: tuple[str, ...]


def _r(noun: str, adjectives: str, features: str, materials: str) -> Role:
    """Compact Role constructor: the word lists are '|'-separated."""
    return Role(noun, tuple(adjectives.split("|")), tuple(features.split("|")), tuple(materials.split("|")))


#: Leaf categories, grouped in pairs under a top level so the default 8 give 4 tops x 2 subs.
CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec("Audio", "Headphones", "headphone", (
        _r("Over-Ear Headphones", "Wireless|Noise-Cancelling|Studio",
           "active noise cancellation|40 mm dynamic drivers|a 30-hour battery", "protein leather|brushed aluminium"),
        _r("Headphone Amplifier", "Balanced|Tube|Desktop",
           "a low-noise gain stage|a 4.4 mm balanced output|a stepped volume knob",
           "brushed aluminium|a glass-fibre circuit board"),
        _r("Replacement Ear Pads", "Memory-Foam|Cooling|Velour",
           "memory-foam cushions|a snap-on fitting ring|cooling gel inserts", "soft velour|protein leather"),
        _r("Headphone Stand", "Dual|Weighted|Minimal",
           "a weighted base|a built-in USB hub|a cable-tidy hook", "walnut wood|matte aluminium"),
    ), ("commuting", "mixing tracks in a home studio", "long flights", "late-night listening")),
    CategorySpec("Audio", "Speakers", "hi-fi", (
        _r("Bookshelf Speakers", "Active|Two-Way|Bass-Reflex",
           "a silk-dome tweeter|a 6.5-inch woofer|a rear bass port", "MDF with walnut veneer|black ash vinyl"),
        _r("Powered Subwoofer", "Compact|Down-Firing|Deep-Bass",
           "a 10-inch driver|a 200 W class-D amplifier|an adjustable crossover", "braced MDF|textured vinyl"),
        _r("Speaker Stands", "Heavy|Spiked|Fillable",
           "decoupling floor spikes|fillable columns|hidden cable channels", "powder-coated steel|solid oak"),
        _r("Speaker Cable", "Audiophile|Braided|Low-Loss",
           "gold-plated banana plugs|14 AWG conductors|a braided jacket", "oxygen-free copper|silver-plated copper"),
    ), ("a living-room hi-fi", "home cinema evenings", "a desktop listening setup", "vinyl playback")),
    CategorySpec("Photography", "Cameras", "camera", (
        _r("Mirrorless Camera", "Full-Frame|Weather-Sealed|Compact",
           "a 24-megapixel sensor|in-body stabilisation|4K video recording", "magnesium alloy|polycarbonate"),
        _r("Prime Lens", "Fast|Portrait|Wide-Angle",
           "a fast f/1.8 aperture|a silent stepping motor|nano-coated elements", "optical glass|a metal mount"),
        _r("Camera Tripod", "Travel|Carbon|Lightweight",
           "a quick-release plate|a ball head|twist leg locks", "carbon fibre|aluminium alloy"),
        _r("Camera Bag", "Weatherproof|Sling|Padded",
           "padded dividers|a laptop sleeve|side access", "water-resistant nylon|waxed canvas"),
    ), ("street photography", "travel and landscapes", "portrait sessions", "wildlife shooting")),
    CategorySpec("Photography", "Lighting", "studio lighting", (
        _r("LED Panel Light", "Bi-Colour|Dimmable|Slim",
           "a CRI of 96|adjustable colour temperature|app-controlled brightness", "anodised aluminium|ABS housing"),
        _r("Softbox Kit", "Octagonal|Quick-Setup|Studio",
           "a double diffuser|a Bowens mount|a removable grid", "ripstop fabric|silver reflective lining"),
        _r("Light Stand", "Air-Cushioned|Compact|Heavy-Duty",
           "air-cushioned sections|a 2.8 m maximum height|a 1/4-inch spigot", "aluminium alloy|spring steel"),
        _r("Ring Light", "Selfie|Dimmable|Desktop",
           "a phone holder|three colour modes|a flexible gooseneck", "ABS housing|frosted acrylic"),
    ), ("product photography", "video calls and streaming", "portrait lighting", "on-location shoots")),
    CategorySpec("Musical Instruments", "Guitars", "guitar", (
        _r("Electric Guitar", "Solid-Body|Vintage|Short-Scale",
           "a maple neck|dual humbucking pickups|a tremolo bridge", "alder|mahogany"),
        _r("Guitar Amplifier", "Tube|Combo|Practice",
           "a 12-inch speaker|built-in reverb|a headphone output", "birch plywood|tolex covering"),
        _r("Guitar Strings", "Light-Gauge|Coated|Vintage",
           "nickel-wound strings|an anti-corrosion coating|a bright tone", "nickel-plated steel|pure nickel"),
        _r("Guitar Strap", "Padded|Adjustable|Vintage",
           "strap locks|a pick pocket|wide shoulder padding", "genuine leather|woven cotton"),
    ), ("blues jams", "rehearsals with a band", "practising at home", "recording riffs")),
    CategorySpec("Musical Instruments", "Keyboards", "keyboard", (
        _r("Digital Piano", "88-Key|Weighted|Stage",
           "hammer-action keys|256-note polyphony|built-in speakers", "wood-grain laminate|ivory-feel plastic"),
        _r("Keyboard Stand", "X-Style|Z-Style|Foldable",
           "height adjustment|a second tier|locking pins", "steel tubing|aluminium"),
        _r("Sustain Pedal", "Half-Damper|Piano-Style|Universal",
           "a half-damper sensor|a polarity switch|a non-slip base", "chrome-plated metal|rubber"),
        _r("MIDI Controller", "Compact|Pad|Velocity-Sensitive",
           "a USB-MIDI port|assignable pads|eight rotary encoders", "ABS plastic|an aluminium top panel"),
    ), ("piano lessons", "live gigs", "music production", "quiet practice with headphones")),
    CategorySpec("Kitchen", "Coffee", "coffee", (
        _r("Espresso Machine", "Semi-Automatic|Dual-Boiler|Compact",
           "a 15-bar pump|a steam wand|a PID temperature control", "stainless steel|brushed chrome"),
        _r("Burr Grinder", "Conical|Flat-Burr|Precision",
           "conical steel burrs|40 grind settings|a low-retention chute", "hardened steel|die-cast aluminium"),
        _r("Milk Frother", "Electric|Handheld|Induction",
           "hot and cold foam modes|a whisk attachment|a non-stick jug", "stainless steel|borosilicate glass"),
        _r("Coffee Tamper", "Calibrated|Barista|Weighted",
           "a calibrated spring|a flat 58 mm base|a levelling distributor", "beech wood|stainless steel"),
    ), ("morning espresso", "latte art", "pour-over brewing", "a home cafe corner")),
    CategorySpec("Kitchen", "Cookware", "cookware", (
        _r("Cast Iron Skillet", "Pre-Seasoned|Heavy-Duty|Deep",
           "even heat distribution|a pouring lip|an assist handle", "cast iron|seasoned cast iron"),
        _r("Saucepan", "Tri-Ply|Non-Stick|Induction-Ready",
           "a tight-fitting lid|measuring marks|a PFOA-free coating", "tri-ply stainless steel|hard-anodised aluminium"),
        _r("Dutch Oven", "Enamelled|Round|Oval",
           "an oven-safe knob|self-basting lid spikes|a chip-resistant glaze", "enamelled cast iron|enamelled steel"),
        _r("Cooking Utensil Set", "Heat-Resistant|12-Piece|Non-Scratch",
           "heat-resistant heads|a holder crock|hanging loops", "silicone and nylon|acacia wood"),
    ), ("searing steaks", "slow-cooked stews", "weeknight dinners", "baking bread")),
    CategorySpec("Outdoors", "Camping", "camping", (
        _r("Backpacking Tent", "Ultralight|Two-Person|Four-Season",
           "a 3000 mm hydrostatic head|colour-coded poles|taped seams", "ripstop nylon|aluminium poles"),
        _r("Sleeping Bag", "Mummy|Insulated|Packable",
           "a comfort rating of -5 C|a draught collar|a compression sack", "goose down|recycled polyester"),
        _r("Sleeping Pad", "Self-Inflating|Insulated|Lightweight",
           "a self-inflating valve|an R-value of 4|a pump sack", "TPU-coated nylon|open-cell foam"),
        _r("Camp Stove", "Compact|Windproof|Canister",
           "a piezo ignition|a simmer control|folding pot supports", "titanium|stainless steel"),
    ), ("thru-hiking", "weekend car camping", "alpine trips", "festival camping")),
    CategorySpec("Outdoors", "Cycling", "cycling", (
        _r("Road Bike Helmet", "Aero|Vented|Lightweight",
           "MIPS protection|18 air vents|a dial-fit system", "EPS foam|a polycarbonate shell"),
        _r("Bike Light Set", "Rechargeable|Bright|Compact",
           "a 1000-lumen beam|USB-C charging|a rear safety light", "an aluminium body|silicone straps"),
        _r("Cycling Gloves", "Padded|Fingerless|Winter",
           "gel palm padding|touchscreen fingertips|a terry-cloth thumb", "synthetic leather|breathable mesh"),
        _r("Bike Lock", "Heavy-Duty|U-Shaped|Folding",
           "a hardened shackle|a frame mount|two keys", "hardened steel|vinyl-coated steel"),
    ), ("daily commuting", "long road rides", "night riding", "city parking")),
    CategorySpec("Computers", "Peripherals", "desk setup", (
        _r("Mechanical Keyboard", "Tenkeyless|Hot-Swappable|RGB",
           "tactile switches|PBT keycaps|programmable macros", "an aluminium frame|PBT plastic"),
        _r("Wireless Mouse", "Ergonomic|Lightweight|Silent",
           "a 26000 DPI sensor|a 2.4 GHz receiver|side buttons", "matte polymer|a honeycomb shell"),
        _r("Desk Mat", "Extended|Water-Resistant|Felt",
           "a stitched edge|a non-slip base|a smooth glide surface", "micro-woven cloth|wool felt"),
        _r("Wrist Rest", "Ergonomic|Cushioned|Low-Profile",
           "a gel-filled cushion|a contoured shape|a rubber base", "memory foam|walnut wood"),
    ), ("coding sessions", "competitive gaming", "office work", "a tidy desk setup")),
    CategorySpec("Computers", "Storage", "storage", (
        _r("External SSD", "Portable|Rugged|Encrypted",
           "1050 MB/s transfers|hardware encryption|a 2 TB capacity", "an aluminium shell|a rubberised casing"),
        _r("USB-C Hub", "Multiport|Slim|Thunderbolt",
           "seven ports|a 100 W power pass-through|4K HDMI output", "zinc alloy|a braided cable"),
        _r("Memory Card", "High-Speed|V90|Endurance",
           "UHS-II support|a V90 video rating|a lifetime warranty", "waterproof plastic|a shock-proof casing"),
        _r("Card Reader", "Dual-Slot|Pocket|Fast",
           "dual SD and microSD slots|a USB-C plug|a keychain loop", "an aluminium shell|ABS plastic"),
    ), ("backing up photos", "editing 4K footage", "laptop docking", "moving files between machines")),
    CategorySpec("Fitness", "Strength", "strength training", (
        _r("Adjustable Dumbbells", "Adjustable|Space-Saving|Quick-Change",
           "quick weight selection|knurled handles|a storage tray", "cast iron plates|chrome steel"),
        _r("Weight Bench", "Foldable|Heavy-Duty|Incline",
           "an incline backrest|a 300 kg load rating|leg hold-downs", "a steel frame|vinyl upholstery"),
        _r("Resistance Bands", "Loop|Heavy|Progressive",
           "five resistance levels|a door anchor|a carry pouch", "natural latex|fabric-covered latex"),
        _r("Lifting Gloves", "Grip|Ventilated|Padded",
           "wrist wraps|palm padding|pull tabs", "neoprene|goatskin leather"),
    ), ("home workouts", "progressive overload", "garage gym training", "physio routines")),
    CategorySpec("Fitness", "Yoga", "yoga", (
        _r("Yoga Mat", "Non-Slip|Extra-Thick|Travel",
           "a 6 mm cushioning layer|alignment lines|a carrying strap", "natural rubber|TPE foam"),
        _r("Yoga Block", "Firm|Eco-Friendly|Lightweight",
           "bevelled edges|a sweat-resistant finish|a two-block set", "cork|EVA foam"),
        _r("Yoga Strap", "Adjustable|Alignment|Long",
           "a D-ring buckle|a 2.5 m length|grip loops", "organic cotton|polyester webbing"),
        _r("Meditation Cushion", "Zafu|Supportive|Crescent",
           "buckwheat filling|a removable cover|a carry handle", "organic cotton|linen"),
    ), ("hot yoga classes", "morning stretching", "pilates", "daily meditation")),
    CategorySpec("Toys", "Building Sets", "building toy", (
        _r("Building Set", "Creative|Technic-Style|Starter",
           "over 500 pieces|step-by-step instructions|moving gears", "ABS plastic|recycled plastic"),
        _r("Brick Storage Bin", "Stackable|Sorting|Large",
           "a sorting tray|a snap lid|a play-mat drawstring", "polypropylene|canvas"),
        _r("Baseplate", "Large|Green|Road",
           "stackable studs|a 32x32 stud grid|printed roads", "ABS plastic|polypropylene"),
        _r("Minifigure Pack", "Collector|Classic|Themed",
           "six figures|interchangeable accessories|glow-in-the-dark parts", "ABS plastic|recycled plastic"),
    ), ("family build nights", "STEM learning", "display models", "rainy afternoons")),
    CategorySpec("Toys", "Puzzles", "puzzle", (
        _r("Jigsaw Puzzle", "1000-Piece|Panoramic|Illustrated",
           "precision-cut pieces|a reference poster|a glare-free finish", "recycled board|birch wood"),
        _r("Puzzle Mat", "Roll-Up|Felt|Portable",
           "a roll-up felt surface|an inflatable tube|a drawstring bag", "felt|neoprene"),
        _r("Puzzle Frame", "Wooden|Glass-Fronted|Gallery",
           "a hanging kit|a backing board|a choice of mounts", "oak veneer|aluminium"),
        _r("Puzzle Sorting Trays", "Stackable|Six-Pack|Lidded",
           "six stackable trays|a dust lid|a smooth inner lip", "polypropylene|bamboo"),
    ), ("quiet evenings", "family gatherings", "brain training", "framing finished art")),
)

_BRAND_HEADS = ("Nor", "Kes", "Val", "Bre", "Tor", "Lum", "Zen", "Ar", "Cor", "Fen", "Hal", "Mar",
                "Ost", "Pel", "Quin", "Ryn", "Sol", "Tam", "Ul", "Vex", "Wyn", "Dal", "Ev", "Gral")
_BRAND_TAILS = ("vik", "tra", "dor", "sen", "ix", "ora", "ent", "ley", "mont", "ara", "ex", "ion",
                "us", "elle", "wick", "ano", "eth", "isk")

_DESC_TEMPLATES = (
    "The {brand} {noun} is {a_adj} piece of {kind} gear with {f1} and {f2}.",
    "Made from {material}, this {noun_l} is designed for {use}.",
    "It features {f1}, which makes it a good fit for {use}.",
    "{a_adj} {noun_l} from {brand} offering {f2}.",
    "Built with {material} and {f3} for everyday {kind} use.",
)

_REVIEW_TEMPLATES = {
    "good": (
        "Really happy with this {noun_l}, especially {f1}; great for {use}.",
        "Excellent {kind} gear, {f1} is the highlight.",
        "Exactly what I needed for {use}. The {material} feels solid.",
        "Great {noun_l}. Love {f1}.",
    ),
    "ok": (
        "Decent {noun_l}, though {f1} could be better.",
        "Does the job for {use}, nothing special as {kind} gear goes.",
        "Okay {noun_l}; the {material} is fine but not premium.",
    ),
    "bad": (
        "Disappointed with this {noun_l}; {f1} did not live up to the description.",
        "Not good for {use}. The {material} feels cheap.",
        "Returned it. Expected more from a {kind} product.",
    ),
}

#: Rating distributions (ratings 1..5) for items inside / outside the user's tastes.
_RATING_P_TASTE = np.array([0.02, 0.03, 0.10, 0.35, 0.50])
_RATING_P_OTHER = np.array([0.06, 0.10, 0.24, 0.35, 0.25])


class SynthConfig(BaseModel):
    """Knobs of the synthetic dataset. The defaults give ~25k interactions in well under a second."""

    model_config = ConfigDict(extra="forbid")

    n_users: int = Field(2000, ge=1, description="number of users")
    n_items: int = Field(600, ge=1, description="number of items in the catalogue")
    n_categories: int = Field(8, ge=1, le=len(CATEGORIES), description="leaf categories used (in table order)")
    seed: int = Field(0, ge=0, description="seed of the numpy Generator; same seed -> same files")
    mean_length: float = Field(12.0, gt=0, description="mean interactions per user (before truncation)")
    min_length: int = Field(5, ge=1, description="shortest user sequence")
    max_length: int = Field(50, ge=1, description="longest user sequence (and at most n_items)")
    p_seq: float = Field(0.6, ge=0, le=1, description="probability the next item is a follow-up of the previous")
    min_followups: int = Field(2, ge=1, description="fewest follow-up items per item")
    max_followups: int = Field(4, ge=1, description="most follow-up items per item")
    p_followup_same_category: float = Field(
        0.85, ge=0, le=1, description="share of follow-ups in the item's own category (else a sibling/other one)"
    )
    popularity_skew: float = Field(1.0, ge=0, description="Zipf exponent of popularity within a category")
    popularity_floor: float = Field(
        0.05, ge=0, description="added to every Zipf weight (top item: 1) so tail items still get picked"
    )
    max_taste_categories: int = Field(3, ge=1, description="a user prefers 1..this many categories")
    taste_concentration: float = Field(1.0, gt=0, description="Dirichlet concentration of taste weights")
    p_explore: float = Field(0.05, ge=0, le=1, description="chance a taste draw ignores the user's tastes")
    brands_per_category: int = Field(4, ge=1, description="brands making items in each category")
    review_rate: float = Field(0.3, ge=0, le=1, description="share of interactions carrying a review")
    base_timestamp: int = Field(1672531200, ge=0, description="earliest timestamp (2023-01-01 UTC)")
    start_spread_days: float = Field(365.0, ge=0, description="users start uniformly within this many days")
    mean_gap_hours: float = Field(60.0, gt=0, description="mean gap between a user's interactions")

    @model_validator(mode="after")
    def _consistent(self) -> SynthConfig:
        if self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) exceeds max_length ({self.max_length})")
        if not self.min_length <= self.mean_length <= self.max_length:
            raise ValueError(
                f"mean_length ({self.mean_length}) must lie in [min_length, max_length] "
                f"= [{self.min_length}, {self.max_length}]"
            )
        if self.min_followups > self.max_followups:
            raise ValueError(f"min_followups ({self.min_followups}) exceeds max_followups ({self.max_followups})")
        if self.n_items < self.n_categories:
            raise ValueError(f"n_items ({self.n_items}) must be at least n_categories ({self.n_categories})")
        n_brands = len(_BRAND_HEADS) * len(_BRAND_TAILS)
        if self.n_categories * self.brands_per_category > n_brands:
            raise ValueError(f"n_categories * brands_per_category must be at most {n_brands}")
        return self


@dataclass
class _Catalogue:
    """Item attributes as parallel arrays, indexed by internal item number."""

    category: np.ndarray  # int, index into the used CATEGORIES
    role: np.ndarray  # int, index into the category's roles
    brand: list[str]
    title: list[str]
    description: list[str]
    feature: list[tuple[str, ...]]
    material: list[str]
    use: list[str]
    popularity: np.ndarray  # Zipf weight within the category (unnormalised)
    members: list[np.ndarray]  # items of each category
    followups: list[np.ndarray]  # follow-up items of each item, most likely first


def _brand_names(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct made-up brand names from syllable pairs."""
    pairs = [h + t for h in _BRAND_HEADS for t in _BRAND_TAILS]
    return [pairs[int(i)] for i in rng.choice(len(pairs), size=count, replace=False)]


def _with_article(word: str) -> str:
    """``word`` preceded by "a" or "an", by how it sounds (rules enough for this vocabulary)."""
    first = word.split("-")[0]
    if first.isupper():  # spelt out: "an RGB", "an X-style", "a U-shaped", "a V90"
        vowel = first[0] in "AEFHILMNORSX"
    else:
        low = first.lower()
        vowel = low[:1] in "aeio8" or (low[:1] == "u" and not low.startswith("uni"))
    return f"{'an' if vowel else 'a'} {word}"


def _mid_sentence(adjective: str) -> str:
    """Lower-case a title-case adjective for use mid-sentence, keeping acronyms ("RGB", "V90", "X-")."""
    return "-".join(p.lower() if p[1:].islower() else p for p in adjective.split("-"))


def _fill(template: str, **fields: str) -> str:
    """Fill a sentence template and capitalise its first letter."""
    text = template.format(**fields)
    return text[0].upper() + text[1:]


def _catalogue(cfg: SynthConfig, rng: np.random.Generator) -> _Catalogue:
    """Draw the items: category, role, brand, text, popularity and follow-up lists."""
    specs = CATEGORIES[: cfg.n_categories]
    n, n_cat = cfg.n_items, cfg.n_categories
    # equal-sized categories (remainder spread at random), item numbers shuffled so ids carry no category
    sizes = np.full(n_cat, n // n_cat)
    sizes[rng.choice(n_cat, size=n % n_cat, replace=False)] += 1
    category = rng.permutation(np.repeat(np.arange(n_cat), sizes))
    members = [np.flatnonzero(category == c) for c in range(n_cat)]

    brands = _brand_names(rng, n_cat * cfg.brands_per_category)
    cat_brands = [brands[c * cfg.brands_per_category : (c + 1) * cfg.brands_per_category] for c in range(n_cat)]
    brand_weights = 1.0 / np.arange(1, cfg.brands_per_category + 1)
    brand_weights /= brand_weights.sum()

    role = np.zeros(n, dtype=np.int64)
    popularity = np.zeros(n, dtype=np.float64)
    brand: list[str] = [""] * n
    title: list[str] = [""] * n
    description: list[str] = [""] * n
    feature: list[tuple[str, ...]] = [()] * n
    material: list[str] = [""] * n
    use: list[str] = [""] * n
    seen_titles: set[str] = set()
    for c, spec in enumerate(specs):
        items = members[c]
        ranks = rng.permutation(len(items))
        popularity[items] = 1.0 / (ranks + 1.0) ** cfg.popularity_skew + cfg.popularity_floor
        for i in (int(x) for x in items):
            role[i] = int(rng.integers(len(spec.roles)))
            r = spec.roles[role[i]]
            b = cat_brands[c][int(rng.choice(cfg.brands_per_category, p=brand_weights))]
            adj = r.adjectives[int(rng.integers(len(r.adjectives)))]
            feats = tuple(r.features[int(k)] for k in rng.permutation(len(r.features)))
            mat = r.materials[int(rng.integers(len(r.materials)))]
            u = spec.uses[int(rng.integers(len(spec.uses)))]
            while True:  # model numbers are redrawn on the rare title collision
                model = f"{b[0]}{chr(ord('A') + int(rng.integers(26)))}-{int(rng.integers(10, 100)) * 10}"
                t = f"{b} {adj} {r.noun} {model}"
                if t not in seen_titles:
                    break
            seen_titles.add(t)
            fields = {
                "brand": b, "noun": r.noun, "noun_l": r.noun.lower(), "a_adj": _with_article(_mid_sentence(adj)), "kind": spec.kind,
                "f1": feats[0], "f2": feats[1 % len(feats)], "f3": feats[2 % len(feats)], "material": mat, "use": u,
            }
            k = int(rng.integers(1, 4))
            picks = rng.choice(len(_DESC_TEMPLATES), size=k, replace=False)
            description[i] = " ".join(_fill(_DESC_TEMPLATES[int(j)], **fields) for j in sorted(picks))
            brand[i], title[i], feature[i], material[i], use[i] = b, t, feats, mat, u

    followups = _followups(cfg, rng, specs, category, role, brand, popularity, members)
    return _Catalogue(category, role, brand, title, description, feature, material, use, popularity,
                      members, followups)


def _followups(
    cfg: SynthConfig,
    rng: np.random.Generator,
    specs: tuple[CategorySpec, ...],
    category: np.ndarray,
    role: np.ndarray,
    brand: list[str],
    popularity: np.ndarray,
    members: list[np.ndarray],
) -> list[np.ndarray]:
    """Each item's follow-ups: its own category mostly (else a sibling under the same top level),
    favouring the next product role and the same brand, weighted by popularity."""
    n_cat = len(specs)
    siblings = [[d for d in range(n_cat) if d != c and specs[d].top == specs[c].top] for c in range(n_cat)]
    brand_arr = np.array(brand)
    lists: list[list[int]] = []
    for i in range(len(category)):
        c = int(category[i])
        k = int(rng.integers(cfg.min_followups, cfg.max_followups + 1))
        chosen: list[int] = []
        for _ in range(k):
            if n_cat == 1 or rng.random() < cfg.p_followup_same_category:
                d = c
            elif siblings[c]:
                d = siblings[c][int(rng.integers(len(siblings[c])))]
            else:
                d = int(rng.choice([x for x in range(n_cat) if x != c]))
            pool = members[d]
            w = popularity[pool].copy()
            if d == c:
                w[role[pool] == (role[i] + 1) % len(specs[c].roles)] *= 4.0
                w[brand_arr[pool] == brand[i]] *= 2.0
            w[pool == i] = 0.0
            w[np.isin(pool, chosen)] = 0.0
            if w.sum() <= 0:
                continue
            chosen.append(int(pool[int(rng.choice(len(pool), p=w / w.sum()))]))
        lists.append(chosen)

    # every item is somebody's follow-up: an orphan takes over the last (least likely) slot of a
    # same-category item, preferably of the previous role, whose last follow-up has other sources
    indeg = np.bincount(np.array([j for fl in lists for j in fl], dtype=np.int64), minlength=len(category))
    for j in (int(x) for x in np.flatnonzero(indeg == 0)):
        c = int(category[j])
        pool = members[c]
        w = popularity[pool].copy()
        w[role[pool] == (role[j] - 1) % len(specs[c].roles)] *= 4.0
        w[pool == j] = 0.0
        swap = np.array([bool(lists[i]) and indeg[lists[i][-1]] >= 2 for i in pool])
        if (w * swap).sum() > 0:
            w *= swap
        if w.sum() <= 0:
            continue
        i = int(pool[int(rng.choice(len(pool), p=w / w.sum()))])
        if lists[i] and indeg[lists[i][-1]] >= 2:
            indeg[lists[i][-1]] -= 1
            lists[i][-1] = j
        else:
            lists[i].append(j)
        indeg[j] += 1
    return [np.array(fl, dtype=np.int64) for fl in lists]


def _user_sequence(
    cfg: SynthConfig, rng: np.random.Generator, cat: _Catalogue, length: int
) -> tuple[list[int], set[int]]:
    """One user's item sequence (no repeats) and the categories the user prefers."""
    n_cat = len(cat.members)
    k = int(rng.integers(1, min(cfg.max_taste_categories, n_cat) + 1))
    tastes = rng.choice(n_cat, size=k, replace=False)
    weights = rng.dirichlet(np.full(k, cfg.taste_concentration))
    used = np.zeros(len(cat.category), dtype=bool)
    seq: list[int] = []

    def taste_draw() -> int | None:
        c = int(rng.integers(n_cat)) if rng.random() < cfg.p_explore else int(tastes[rng.choice(k, p=weights)])
        for pool in (cat.members[c], np.arange(len(cat.category))):  # fall back to the whole catalogue
            free = pool[~used[pool]]
            if len(free):
                w = cat.popularity[free]
                return int(free[int(rng.choice(len(free), p=w / w.sum()))])
        return None

    while len(seq) < length:
        nxt: int | None = None
        if seq and rng.random() < cfg.p_seq:
            fups = [int(j) for j in cat.followups[seq[-1]]]
            free = [(r, j) for r, j in enumerate(fups) if not used[j]]
            if free:
                w = np.array([1.0 / (r + 1) for r, _ in free])  # earlier follow-ups are likelier
                nxt = free[int(rng.choice(len(free), p=w / w.sum()))][1]
        if nxt is None:
            nxt = taste_draw()
        if nxt is None:
            break
        used[nxt] = True
        seq.append(nxt)
    return seq, {int(t) for t in tastes}


def _review(rng: np.random.Generator, cat: _Catalogue, i: int, rating: int) -> str:
    """A short templated review of item ``i`` whose tone follows ``rating``."""
    spec = CATEGORIES[int(cat.category[i])]
    mood = "good" if rating >= 4 else "ok" if rating == 3 else "bad"
    templates = _REVIEW_TEMPLATES[mood]
    noun = spec.roles[int(cat.role[i])].noun
    f1 = cat.feature[i][int(rng.integers(len(cat.feature[i])))]
    return _fill(
        templates[int(rng.integers(len(templates)))],
        noun_l=noun.lower(), kind=spec.kind, f1=f1, material=cat.material[i], use=cat.use[i],
    )


def _ids(prefix: str, n: int) -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"{prefix}{k:0{width}d}" for k in range(n)]


def generate(cfg: SynthConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate ``(interactions, items)`` for ``cfg``; deterministic for a given config.

    ``interactions``: user_id (str), item_id (str), timestamp (int seconds, increasing per user),
    rating (int 1-5), review (str, empty when none); sorted by user then time.
    ``items``: item_id, title, description, brand, categories ("Top,Sub"); sorted by item_id.
    """
    cfg = cfg or SynthConfig()
    rng = np.random.default_rng(cfg.seed)
    cat = _catalogue(cfg, rng)
    item_ids = _ids("i", cfg.n_items)
    user_ids = _ids("u", cfg.n_users)

    # sequence lengths: min_length + geometric excess with the requested mean, truncated at max_length
    excess_mean = cfg.mean_length - cfg.min_length
    excess = rng.geometric(1.0 / (excess_mean + 1.0), size=cfg.n_users) - 1
    lengths = np.minimum(cfg.min_length + excess, min(cfg.max_length, cfg.n_items))  # no repeats

    rows_u: list[str] = []
    rows_i: list[str] = []
    rows_t: list[int] = []
    rows_r: list[int] = []
    rows_v: list[str] = []
    gap_mean = cfg.mean_gap_hours * 3600.0
    for u in range(cfg.n_users):
        seq, tastes = _user_sequence(cfg, rng, cat, int(lengths[u]))
        t = cfg.base_timestamp + int(rng.integers(0, int(cfg.start_spread_days * 86400) + 1))
        for i in seq:
            p = _RATING_P_TASTE if int(cat.category[i]) in tastes else _RATING_P_OTHER
            rating = int(rng.choice(5, p=p)) + 1
            review = _review(rng, cat, i, rating) if rng.random() < cfg.review_rate else ""
            rows_u.append(user_ids[u])
            rows_i.append(item_ids[i])
            rows_t.append(t)
            rows_r.append(rating)
            rows_v.append(review)
            t += 60 + int(rng.exponential(gap_mean))  # at least a minute between interactions

    interactions = pd.DataFrame(
        {
            "user_id": rows_u,
            "item_id": rows_i,
            "timestamp": np.array(rows_t, dtype=np.int64),
            "rating": np.array(rows_r, dtype=np.int64),
            "review": rows_v,
        }
    )
    specs = CATEGORIES[: cfg.n_categories]
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": cat.title,
            "description": cat.description,
            "brand": cat.brand,
            "categories": [f"{specs[int(c)].top},{specs[int(c)].sub}" for c in cat.category],
        }
    )
    return interactions, items


def _marker(cfg: SynthConfig, interactions: pd.DataFrame, items: pd.DataFrame) -> dict:
    """Content of ``synth.json``: who made the folder, with which config, and its sizes."""
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "config": cfg.model_dump(),
        "stats": {
            "users": int(interactions["user_id"].nunique()),
            "items": int(len(items)),
            "interactions": int(len(interactions)),
        },
    }


def _made_by_synth(folder: Path) -> bool:
    """True when ``folder`` holds only synth's files and a valid synth marker."""
    names = {p.name for p in folder.iterdir()}
    if not names <= set(SYNTH_FILES) or MARKER_FILE not in names:
        return False
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME


def _fresh_sibling(out: Path, tag: str) -> Path:
    """An unused hidden path next to ``out`` for a temporary or retired folder."""
    while True:
        cand = out.parent / f".{out.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if not cand.exists():
            return cand


def write(cfg: SynthConfig | None, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write ``interactions.csv``, ``items.csv`` and ``synth.json`` into ``out`` atomically.

    Files are written into a temporary folder next to ``out`` which is then renamed into place,
    so ``out`` is never left half-written. An existing ``out`` is replaced when it is empty or
    was made by synth; otherwise a :class:`GenrecError` is raised unless ``overwrite`` is True.
    Returns the written paths (inside ``out``).
    """
    cfg = cfg or SynthConfig()
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise GenrecError(f"{out}: exists and is not a folder; choose another output path")
        if any(out.iterdir()) and not _made_by_synth(out) and not overwrite:
            raise GenrecError(
                f"{out}: folder is not empty and was not made by `genrec data synth`; "
                "choose an empty folder or pass --overwrite"
            )
    given, out = out, out.resolve()  # resolve so "." or "data/" still name a folder and its parent
    out.parent.mkdir(parents=True, exist_ok=True)

    interactions, items = generate(cfg)
    tmp = _fresh_sibling(out, "tmp")
    os.mkdir(tmp)  # honours the umask, unlike mkdtemp's 0700
    try:
        interactions.to_csv(tmp / INTERACTIONS_FILE, index=False, lineterminator="\n")
        items.to_csv(tmp / ITEMS_FILE, index=False, lineterminator="\n")
        marker = _marker(cfg, interactions, items)
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            old = _fresh_sibling(out, "old")
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)  # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return [given / name for name in SYNTH_FILES]
