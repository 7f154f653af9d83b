"""Synthetic two-party datasets with a real, learnable domain shift.

The pipeline must run on a fresh machine without downloads, and the paper's
question -- does combining another party's model help on *my* data? -- only
has an interesting answer when the two parties' data differ. So each pair
generates two nnU-Net raw datasets, ``a`` and ``b``, that show the same kind
of object under different acquisition conditions:

``polyp`` (2-D RGB ``.png``, like Kvasir vs CVC-ClinicDB)
    *a*: many independent frames, widely varying white balance and polyp
    colour, sharp, no specular highlights, large polyps (radius 10-25 px at
    96 px) that mostly look *paler* than the mucosa. *b*: frames come in short
    videos (consecutive frames share scene and polyp, with small camera
    motion; see ``case_groups.csv``), one camera (orange balance, gamma),
    blur, specular highlights, smaller polyps (radius 7-14 px) that look
    *redder/darker* than the mucosa. Both share a shadow along the polyp's
    edge and its dome shading. nnU-Net z-scores every channel of every image,
    so a mere colour gain would be invisible to the network; the shift is
    therefore in the *relation* between polyp and mucosa colour, in blur,
    highlights and size.

``pelvis`` (3-D single-channel MRI-like ``.nii.gz``, like two scanners)
    A curved tube (label ``rectum_sigmoid``) runs through every slice among
    bladder, bones and muscles. *a*: 4.0 x 0.53 x 0.53 mm, air-filled lumen
    (dark tube), mild bias field, little noise. *b*: 3.3 x 0.52 x 0.52 mm,
    gel-filled lumen (bright centre, dark wall), strong bias field, more
    Rician noise, slightly thinner tube.

**The paper's regime.** Party *a* is the larger, more varied party: a share of its
cases (``STYLE_MIXES``: 35 %) is drawn from a style between a's and b's (blend weight
0.5-1 towards b; :func:`blend_styles`), like a public dataset collected at several
centres, one of which resembles b's. So a's model has seen b-like data and loses a
little on b's test set, while b's model (one centre, one camera) has never seen a-like
data and loses a lot on a's. The profiles size the parties so that the test set (the
last of six parts) holds >= 24 frames (polyp) / >= 12 volumes (pelvis) per party.

A model trained on one party learns cues that are only partly present in the
other, so it does measurably worse there -- which fine-tuning, ensembles and
stitching can then try to repair. The styles and ``STYLE_MIXES`` are the knobs;
``tests/data/test_data_synthetic.py`` checks the cues, and the basis models of the
``quick`` profile were checked to land in the regime (README, "The embedded data").
Every case is drawn from its own seed
(``SeedSequence([seed, pair, party]).spawn``), so files are byte-identical on
rerun and case *i* does not depend on how many cases follow it (nor does its
blend towards the other party's style, drawn from its own seed too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from stitch_ops.data.raw import (
    IMAGES_TR,
    LABELS_TR,
    image_path,
    label_path,
    write_case_groups,
    write_dataset_json,
)
from stitch_ops.outputs import output_dir, write_png

logger = logging.getLogger(__name__)

PAIRS = ("polyp", "pelvis")
PARTIES = ("a", "b")
_REFERENCE_SIZE = 96  # sizes below are given in pixels at this image size and scaled


# =========================================================================== public API


def generate_pair(
    pair: str,
    out_dir: Path,
    n_cases: Mapping[str, int],
    seed: int,
    image_size: int = 96,
    progress: bool = True,
) -> dict[str, Path]:
    """Write the two parties' raw datasets of one synthetic pair.

    Args:
        pair: ``"polyp"`` (2-D RGB PNG frames) or ``"pelvis"`` (3-D NIfTI volumes).
        out_dir: receives ``a/`` and ``b/``, each an nnU-Net v2 raw dataset
            (``imagesTr/{case}_0000{ending}``, ``labelsTr/{case}{ending}``,
            ``dataset.json``; polyp ``b`` also ``case_groups.csv``). Existing
            party folders are replaced only once the new one is complete.
        n_cases: cases per party, e.g. ``{"a": 60, "b": 36}``.
        seed: non-negative integer; the same seed gives byte-identical files.
        image_size: in-plane size in pixels (square); object sizes scale with it.
        progress: show a tqdm progress bar.

    Returns:
        ``{"a": out_dir / "a", "b": out_dir / "b"}``.

    Raises:
        ValueError: unknown ``pair``, bad ``n_cases``, negative ``seed`` or ``image_size < 32``.

    Example:
        >>> paths = generate_pair("polyp", Path("data/polyp/source"), {"a": 60, "b": 36}, seed=0)  # doctest: +SKIP
        >>> sorted(p.name for p in (paths["a"] / "imagesTr").iterdir())[:1]  # doctest: +SKIP
        ['polyp_a_0000_0000.png']
    """
    if pair not in PAIRS:
        raise ValueError(f"unknown synthetic pair {pair!r}; expected one of {list(PAIRS)}.")
    counts = _check_n_cases(n_cases)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels to hold the objects, got {image_size}.")
    out_dir = Path(out_dir)
    logger.info(
        "generating synthetic pair %r in %s: cases %s, seed %d, image size %d", pair, out_dir, counts, seed, image_size
    )

    from tqdm.auto import tqdm

    writer = _PolypWriter() if pair == "polyp" else _PelvisWriter()
    paths: dict[str, Path] = {}
    with tqdm(total=sum(counts.values()), desc=f"synthetic {pair}", unit="case", disable=not progress) as bar:
        for party in PARTIES:
            paths[party] = out_dir / party
            writer.write_party(party, paths[party], counts[party], seed, image_size, bar.update)
    return paths


def _check_n_cases(n_cases: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(n_cases, Mapping) or set(n_cases) != set(PARTIES):
        keys = sorted(n_cases) if isinstance(n_cases, Mapping) else n_cases
        raise ValueError(f"n_cases must map exactly the parties {list(PARTIES)} to counts, got {keys!r}.")
    counts = {}
    for party in PARTIES:
        value = n_cases[party]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"n_cases[{party!r}] must be a positive integer, got {value!r}.")
        counts[party] = int(value)
    return counts


def _party_seeds(seed: int, pair: str, party: str, n: int) -> list[np.random.SeedSequence]:
    """One independent seed per case (or per video), stable whatever ``n`` is."""
    root = np.random.SeedSequence([int(seed), PAIRS.index(pair), PARTIES.index(party)])
    return root.spawn(n)


# =========================================================================== the paper's regime


@dataclass(frozen=True)
class StyleMix:
    """How far a party's cases reach into the other party's style.

    The paper's regime: party *a* (Kvasir-like, more and more varied data) covers part of
    *b*'s appearance, *b* (one centre, one camera) does not cover *a*'s. So a share of
    a's cases (a's videos, for polyp b) is drawn from a style *between* a's and b's:
    ``blend_styles(own, other, t)`` with ``t ~ U(reach)`` (``t = 1``: b's style itself).
    a's model has then seen b-like data and loses a little on b's test set; b's model has
    never seen a-like data and loses a lot on a's. ``share = 0``: the party's own style only.
    """

    share: float = 0.0
    reach: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or not 0.0 <= self.reach[0] <= self.reach[1] <= 1.0:
            raise ValueError(f"StyleMix needs 0 <= share <= 1 and 0 <= reach[0] <= reach[1] <= 1, got {self}.")


STYLE_MIXES = {
    "polyp": {"a": StyleMix(share=0.35, reach=(0.5, 1.0)), "b": StyleMix()},
    "pelvis": {"a": StyleMix(share=0.35, reach=(0.5, 1.0)), "b": StyleMix()},
}

_KEEP_OWN = ("frames_per_video",)  # a party's acquisition protocol, not its appearance


def blend_styles(own: Any, other: Any, t: float) -> Any:
    """The style ``(1 - t) · own + t · other``, field by field (integers rounded).

    Numbers and tuples of numbers are interpolated; ``frames_per_video`` stays the
    party's own (it is how the party records, not how its images look).
    """
    if type(own) is not type(other):
        raise TypeError(f"cannot blend a {type(own).__name__} with a {type(other).__name__}.")
    if t == 0.0:
        return own

    def mix(x: Any, y: Any) -> Any:
        if isinstance(x, tuple):
            return tuple(mix(u, v) for u, v in zip(x, y))
        value = (1.0 - t) * x + t * y
        return int(round(value)) if isinstance(x, int) and not isinstance(x, bool) else float(value)

    changes = {f.name: mix(getattr(own, f.name), getattr(other, f.name)) for f in fields(own) if f.name not in _KEEP_OWN}
    return replace(own, **changes)


def case_blend(seed: int, pair: str, party: str, index: int) -> float:
    """Blend weight ``t`` towards the other party's style of case (or video) ``index``.

    Drawn from its own seed, so it does not depend on how many cases follow.
    """
    mix = STYLE_MIXES[pair][party]
    if mix.share <= 0.0:
        return 0.0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), PAIRS.index(pair), PARTIES.index(party), 7, index]))
    reaches, t = rng.uniform(0.0, 1.0) < mix.share, rng.uniform(*mix.reach)
    return float(t) if reaches else 0.0


def case_style(styles: Mapping[str, Any], seed: int, pair: str, party: str, index: int) -> tuple[Any, float]:
    """The style of one case (or video) of ``party`` and its blend weight towards the other party."""
    t = case_blend(seed, pair, party, index)
    other = PARTIES[1 - PARTIES.index(party)]
    return blend_styles(styles[party], styles[other], t), t


# =========================================================================== polyp


@dataclass(frozen=True)
class PolypStyle:
    """How one party's endoscope, light and patients look (sizes in px at 96 px).

    ``polyp_tint`` multiplies the mucosa colour inside the polyp (per RGB
    channel); it is what separates polyp from mucosa once nnU-Net has
    z-scored each channel.
    """

    radius: tuple[float, float]
    mucosa: tuple[float, float, float]
    mucosa_jitter: float
    polyp_tint: tuple[float, float, float]
    tint_jitter: float
    gains_jitter: float
    camera_gains: tuple[float, float, float]
    gamma: float
    blur_sigma: tuple[float, float]
    highlights: tuple[int, int]
    folds: tuple[int, int]
    noise: float
    vignette: float
    frames_per_video: int  # 1: independent frames; >1: upper bound of a video's length


POLYP_STYLES = {
    "a": PolypStyle(
        radius=(10.0, 25.0),
        mucosa=(0.78, 0.42, 0.36),
        mucosa_jitter=0.08,
        polyp_tint=(1.05, 1.2, 1.25),
        tint_jitter=0.25,
        gains_jitter=0.12,
        camera_gains=(1.0, 1.0, 1.0),
        gamma=1.0,
        blur_sigma=(0.0, 0.0),
        highlights=(0, 0),
        folds=(0, 3),
        noise=0.012,
        vignette=0.35,
        frames_per_video=1,
    ),
    "b": PolypStyle(
        radius=(7.0, 14.0),
        mucosa=(0.86, 0.52, 0.30),
        mucosa_jitter=0.03,
        polyp_tint=(1.15, 0.72, 0.70),
        tint_jitter=0.04,
        gains_jitter=0.02,
        camera_gains=(1.0, 0.93, 0.82),
        gamma=0.8,
        blur_sigma=(0.8, 1.3),
        highlights=(3, 7),
        folds=(1, 2),
        noise=0.02,
        vignette=0.55,
        frames_per_video=8,
    ),
}


@dataclass(frozen=True)
class _PolypScene:
    """Everything shared by the frames of one video (one frame for party a)."""

    mucosa: np.ndarray  # (3,)
    texture: np.ndarray  # (K, 4): fy, fx, phase, amplitude (frequencies in cycles per image)
    folds: np.ndarray  # (F, 6): angle, offset, amplitude, wavelength, phase, width
    centre: tuple[float, float]
    radius: float
    aspect: float
    rotation: float
    harmonics: np.ndarray  # (3, 2): amplitude, phase for k = 2, 3, 4
    tint: np.ndarray  # (3,)
    gains: np.ndarray  # (3,)
    light: float
    highlights: np.ndarray  # (H, 4): y, x (world px), sigma, on_polyp flag
    blur: float


class _PolypWriter:
    """Renders and writes the polyp pair (RGB PNG frames, label PNG 0/1)."""

    file_ending = ".png"

    def write_party(
        self, party: str, target: Path, n: int, seed: int, size: int, advance: Callable[[int], object]
    ) -> None:
        style = POLYP_STYLES[party]
        groups: dict[str, str] = {}
        with output_dir(target) as tmp:
            (tmp / IMAGES_TR).mkdir()
            (tmp / LABELS_TR).mkdir()
            for case, group, image, label in self._frames(party, style, n, seed, size):
                write_png(image_path(tmp, case, self.file_ending), image)
                write_png(label_path(tmp, case, self.file_ending), label)
                groups[case] = group
                advance(1)
            write_dataset_json(
                tmp,
                channel_names={"0": "R", "1": "G", "2": "B"},
                labels={"background": 0, "polyp": 1},
                num_training=n,
                file_ending=self.file_ending,
                name=f"synthetic_polyp_{party}",
                description=f"stitch_ops synthetic polyp party {party} (seed {seed}, {size} px)",
            )
            if style.frames_per_video > 1:
                write_case_groups(tmp, groups)

    def _frames(
        self, party: str, style: PolypStyle, n: int, seed: int, size: int
    ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
        lengths = _video_lengths(n, style.frames_per_video, seed, party)
        case_index = 0
        for video, (length, video_seed) in enumerate(zip(lengths, _party_seeds(seed, "polyp", party, len(lengths)))):
            scene_seed, walk_seed, *frame_seeds = video_seed.spawn(length + 2)
            look, _ = case_style(POLYP_STYLES, seed, "polyp", party, video)
            scene = _sample_polyp_scene(np.random.default_rng(scene_seed), look, size)
            rng_walk = np.random.default_rng(walk_seed)
            offset, zoom = np.zeros(2), 1.0
            for frame_seed in frame_seeds:
                rng = np.random.default_rng(frame_seed)
                image, label = _render_polyp(scene, look, size, rng, offset, zoom)
                case = f"polyp_{party}_{case_index:04d}"
                group = f"polyp_{party}_video{video:03d}" if style.frames_per_video > 1 else case
                yield case, group, image, label
                case_index += 1
                offset = offset + rng_walk.normal(0.0, 1.5 * size / _REFERENCE_SIZE, 2)
                zoom = float(np.clip(zoom * (1 + rng_walk.normal(0.0, 0.03)), 0.85, 1.15))


def _video_lengths(n: int, max_len: int, seed: int, party: str) -> list[int]:
    """Split ``n`` frames into videos; at most ``n // 6`` frames each so a six-bin split stays possible."""
    if max_len <= 1:
        return [1] * n
    upper = max(1, min(max_len, n // 6))
    lower = max(1, upper // 2)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 99, PARTIES.index(party)]))
    lengths: list[int] = []
    while sum(lengths) < n:
        lengths.append(min(int(rng.integers(lower, upper + 1)), n - sum(lengths)))
    return lengths


def _sample_polyp_scene(rng: np.random.Generator, style: PolypStyle, size: int) -> _PolypScene:
    scale = size / _REFERENCE_SIZE
    radius = rng.uniform(*style.radius) * scale
    fov = 0.5 * size
    # keep the polyp (with room for motion and zoom) inside the circular field of view
    reach = max(0.0, fov - 1.25 * radius - 4 * scale)
    r, theta = reach * np.sqrt(rng.uniform(0, 1)), rng.uniform(0, 2 * np.pi)
    centre = (fov + r * np.sin(theta), fov + r * np.cos(theta))
    n_tex = 6
    texture = np.column_stack(
        [
            rng.uniform(-4, 4, n_tex),
            rng.uniform(-4, 4, n_tex),
            rng.uniform(0, 2 * np.pi, n_tex),
            rng.uniform(0.02, 0.05, n_tex),
        ]
    )
    n_folds = int(rng.integers(style.folds[0], style.folds[1] + 1))
    folds = np.column_stack(
        [
            rng.uniform(0, np.pi, n_folds),  # angle
            rng.uniform(-0.4, 0.4, n_folds) * size,  # offset from centre
            rng.uniform(2, 8, n_folds) * scale,  # amplitude
            rng.uniform(0.6, 1.5, n_folds) * size,  # wavelength
            rng.uniform(0, 2 * np.pi, n_folds),  # phase
            rng.uniform(1.5, 3.5, n_folds) * scale,  # width
        ]
    ).reshape(n_folds, 6)
    n_high = int(rng.integers(style.highlights[0], style.highlights[1] + 1))
    on_polyp = rng.uniform(0, 1, n_high) < 0.5
    ang, dist = rng.uniform(0, 2 * np.pi, n_high), np.sqrt(rng.uniform(0, 1, n_high))
    hy = np.where(on_polyp, centre[0] + 0.6 * radius * dist * np.sin(ang), rng.uniform(0.15, 0.85, n_high) * size)
    hx = np.where(on_polyp, centre[1] + 0.6 * radius * dist * np.cos(ang), rng.uniform(0.15, 0.85, n_high) * size)
    highlights = np.column_stack([hy, hx, rng.uniform(0.6, 1.6, n_high) * scale, on_polyp]).reshape(n_high, 4)
    return _PolypScene(
        mucosa=np.clip(np.array(style.mucosa) + rng.uniform(-1, 1, 3) * style.mucosa_jitter, 0.05, 0.95),
        texture=texture,
        folds=folds,
        centre=centre,
        radius=radius,
        aspect=rng.uniform(0.75, 1.0),
        rotation=rng.uniform(0, np.pi),
        harmonics=np.column_stack([rng.uniform(0, 0.08, 3), rng.uniform(0, 2 * np.pi, 3)]),
        tint=np.array(style.polyp_tint) * (1 + rng.uniform(-1, 1, 3) * style.tint_jitter),
        gains=np.array(style.camera_gains) * (1 + rng.uniform(-1, 1, 3) * style.gains_jitter),
        light=rng.uniform(0, 2 * np.pi),
        highlights=highlights,
        blur=rng.uniform(*style.blur_sigma) * scale,
    )


def _render_polyp(
    scene: _PolypScene, style: PolypStyle, size: int, rng: np.random.Generator, offset: np.ndarray, zoom: float
) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: ``(H W 3 uint8 image, H W uint8 label 0/1)``; ``offset``/``zoom`` move the camera."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    centre = 0.5 * size
    # world coordinates seen by this frame's camera (zoom about the image centre, then shift)
    wy = (yy - centre) / zoom + centre + offset[0]
    wx = (xx - centre) / zoom + centre + offset[1]

    shade = np.ones_like(wy)
    for fy, fx, phase, amp in scene.texture:
        shade += amp * np.cos(2 * np.pi * (fy * wy + fx * wx) / size + phase)
    for angle, off, amp, wavelength, phase, width in scene.folds:
        u = (wx - centre) * np.cos(angle) + (wy - centre) * np.sin(angle)
        v = -(wx - centre) * np.sin(angle) + (wy - centre) * np.cos(angle)
        dist = v - off - amp * np.sin(2 * np.pi * u / wavelength + phase)
        shade *= 1 - 0.35 * np.exp(-((dist / width) ** 2))
    image = scene.mucosa[:, None, None] * shade[None]

    soft, dome, directional, rim, label = _polyp_shape(scene, wy, wx)
    polyp_shade = (0.85 + 0.25 * dome - 0.15 * directional) * (
        1 + 0.03 * ndimage.gaussian_filter(rng.normal(size=wy.shape), 1.0)
    )
    polyp = scene.mucosa[:, None, None] * scene.tint[:, None, None] * (shade * polyp_shade)[None]
    image = image * (1 - soft[None]) + polyp * soft[None]
    image = image * (1 - 0.3 * rim)[None]  # the shadow along the polyp's edge: a cue both parties share

    radius2 = ((yy - centre) ** 2 + (xx - centre) ** 2) / centre**2
    image = image * (1 - style.vignette * radius2)[None]
    image = np.clip(image, 0, 1) ** style.gamma * scene.gains[:, None, None]
    for hy, hx, sigma, _ in scene.highlights:  # specular reflections over-expose the sensor: white, saturated
        spot = np.exp(-((wy - hy) ** 2 + (wx - hx) ** 2) / (2 * sigma**2))
        image = image + (1.5 - image) * spot[None]
    if scene.blur > 0:
        image = ndimage.gaussian_filter(image, sigma=(0, scene.blur, scene.blur))
    image = image + rng.normal(0.0, style.noise, image.shape)
    inside_fov = radius2 <= 1.04
    image = np.where(inside_fov[None], image, 0.02)
    label = label & inside_fov
    rgb = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    return rgb, label.astype(np.uint8)


def _polyp_shape(scene: _PolypScene, wy: np.ndarray, wx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Soft mask, dome height, lit side, edge shadow and hard label of the polyp in world coordinates."""
    dy, dx = wy - scene.centre[0], wx - scene.centre[1]
    cos, sin = np.cos(scene.rotation), np.sin(scene.rotation)
    u, v = dx * cos + dy * sin, (-dx * sin + dy * cos) / scene.aspect
    rho, angle = np.hypot(u, v), np.arctan2(v, u)
    boundary = np.full_like(rho, scene.radius)
    for k, (amp, phase) in enumerate(scene.harmonics, start=2):
        boundary += scene.radius * amp * np.cos(k * angle + phase)
    q = rho / boundary
    soft = np.clip((1 - q) * boundary / 1.5 + 0.5, 0, 1)  # 1.5 px anti-aliased rim
    dome = np.sqrt(np.clip(1 - q**2, 0, 1))
    directional = np.clip(q, 0, 1) * np.cos(angle + scene.rotation - scene.light)
    rim = np.exp(-(((q - 1) * boundary / 1.5) ** 2))
    return soft, dome, directional, rim, q < 1


# =========================================================================== pelvis


@dataclass(frozen=True)
class PelvisStyle:
    """One party's scanner and protocol; intensities are T2-like fractions of ``scale``."""

    spacing: tuple[float, float, float]  # mm, numpy order (slice, row, column)
    n_slices: tuple[int, int]
    tube_radius: tuple[float, float]  # px at 96
    tissue: float
    muscle: float
    bladder: float
    marrow: float
    cortex: float
    wall: float
    lumen: float
    bias: float
    noise: float
    scale: float


PELVIS_STYLES = {
    "a": PelvisStyle(
        spacing=(4.0, 0.53, 0.53),
        n_slices=(12, 14),
        tube_radius=(10.0, 14.0),
        tissue=0.70,
        muscle=0.30,
        bladder=1.00,
        marrow=0.55,
        cortex=0.08,
        wall=0.35,
        lumen=0.06,
        bias=0.08,
        noise=0.02,
        scale=1000.0,
    ),
    "b": PelvisStyle(
        spacing=(3.3, 0.52, 0.52),
        n_slices=(14, 16),
        tube_radius=(8.0, 12.0),
        tissue=0.55,
        muscle=0.32,
        bladder=0.95,
        marrow=0.60,
        cortex=0.10,
        wall=0.22,
        lumen=0.85,
        bias=0.40,
        noise=0.05,
        scale=2500.0,
    ),
}


class _PelvisWriter:
    """Renders and writes the pelvis pair (int16 MRI-like NIfTI volumes, uint8 labels)."""

    file_ending = ".nii.gz"

    def write_party(
        self, party: str, target: Path, n: int, seed: int, size: int, advance: Callable[[int], object]
    ) -> None:
        style = PELVIS_STYLES[party]
        with output_dir(target) as tmp:
            (tmp / IMAGES_TR).mkdir()
            (tmp / LABELS_TR).mkdir()
            for index, case_seed in enumerate(_party_seeds(seed, "pelvis", party, n)):
                case_look, _ = case_style(PELVIS_STYLES, seed, "pelvis", party, index)
                volume, label = _render_pelvis(np.random.default_rng(case_seed), case_look, size)
                case = f"pelvis_{party}_{index:04d}"
                _save_nifti(volume, case_look.spacing, image_path(tmp, case, self.file_ending))
                _save_nifti(label, case_look.spacing, label_path(tmp, case, self.file_ending))
                advance(1)
            write_dataset_json(
                tmp,
                channel_names={"0": "MRI"},
                labels={"background": 0, "rectum_sigmoid": 1},
                num_training=n,
                file_ending=self.file_ending,
                name=f"synthetic_pelvis_{party}",
                description=(
                    f"stitch_ops synthetic pelvis party {party} (seed {seed}, {size} px, spacing {style.spacing} mm)"
                ),
            )


def _render_pelvis(rng: np.random.Generator, style: PelvisStyle, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one volume: ``(Z Y X int16 image, Z Y X uint8 label 0/1)``."""
    scale = size / _REFERENCE_SIZE
    n_slices = int(rng.integers(style.n_slices[0], style.n_slices[1] + 1))
    z_mm = (np.arange(n_slices) - (n_slices - 1) / 2) * style.spacing[0]  # physical position of each slice
    zz = z_mm[:, None, None]
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5)[:, None]  # (1, Y, X) each

    texture = np.zeros((n_slices, size, size))
    for _ in range(5):
        fz, fy, fx = rng.uniform(-0.02, 0.02), rng.uniform(-3, 3) / size, rng.uniform(-3, 3) / size
        texture = texture + rng.uniform(0.02, 0.05) * np.cos(
            2 * np.pi * (fz * zz + fy * yy + fx * xx) + rng.uniform(0, 6.3)
        )
    volume = style.tissue * (1 + texture)

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2

    for side in (0.3, 0.7):  # pelvic floor muscles
        muscle = ellipse(size * rng.uniform(0.72, 0.8), size * side, size * 0.1, size * 0.16) < 1
        volume = np.where(np.broadcast_to(muscle, volume.shape), style.muscle, volume)
    for side in (0.1, 0.9):  # femoral heads: marrow with a dark cortex
        bone = ellipse(size * rng.uniform(0.3, 0.4), size * side, size * 0.13, size * 0.13)
        volume = np.where(np.broadcast_to(bone < 1, volume.shape), style.cortex, volume)
        volume = np.where(np.broadcast_to(bone < 0.7, volume.shape), style.marrow, volume)
    bladder_z = rng.uniform(-0.3, 0.0) * n_slices * style.spacing[0]
    bladder = (
        ellipse(size * 0.2, size * rng.uniform(0.45, 0.55), size * 0.14, size * 0.24) + ((zz - bladder_z) / 18.0) ** 2
    )
    volume = np.where(bladder < 1, style.bladder, volume)

    rho, inside = _rectum_sigmoid(rng, style, size, scale, zz, yy, xx)
    volume = np.where(rho < 1, style.wall, volume)
    volume = np.where(rho < 0.62, style.lumen, volume)

    volume = ndimage.gaussian_filter(volume, sigma=(0, 0.6 * scale, 0.6 * scale))  # partial volume
    volume = volume * _bias_field(rng, style.bias, zz, yy / size - 0.5, xx / size - 0.5)
    noise = rng.normal(0.0, style.noise, (2, *volume.shape))
    volume = np.sqrt((volume + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
    image = np.round(np.clip(volume * style.scale, 0, 32767)).astype(np.int16)
    return image, inside.astype(np.uint8)


def _rectum_sigmoid(
    rng: np.random.Generator,
    style: PelvisStyle,
    size: int,
    scale: float,
    zz: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A curved tube through all slices: normalised radial distance and its ``< 1`` mask."""
    radius = rng.uniform(*style.tube_radius) * scale
    amp_y, amp_x = rng.uniform(2, 6) * scale, rng.uniform(5, 14) * scale
    y0 = size * rng.uniform(0.58, 0.64)
    x0 = rng.uniform(radius + amp_x + 3, size - radius - amp_x - 3) if size - 2 * (radius + amp_x + 3) > 0 else size / 2
    omega_y, omega_x = rng.uniform(0.03, 0.06), rng.uniform(0.03, 0.07)  # radians per mm
    cy = y0 + amp_y * np.sin(omega_y * zz + rng.uniform(0, 6.3))
    cx = x0 + amp_x * np.sin(omega_x * zz + rng.uniform(0, 6.3))
    r = radius * (1 + 0.15 * np.sin(0.08 * zz + rng.uniform(0, 6.3)))
    aspect = rng.uniform(0.75, 1.0)
    rho = np.sqrt(((yy - cy) / (r * aspect)) ** 2 + ((xx - cx) / r) ** 2)
    return rho, rho < 1


def _bias_field(rng: np.random.Generator, strength: float, zz: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field (coil sensitivity): linear plus quadratic in-plane, slow along slices."""
    cy, cx, cq, cz = rng.uniform(-1, 1, 4)
    field = cy * y + cx * x + cq * (y**2 + x**2 - 1 / 6) + 0.2 * cz * np.tanh(zz / 30.0)
    return 1 + strength * field / 0.75


def _save_nifti(array: np.ndarray, spacing_zyx: tuple[float, float, float], path: Path) -> None:
    """Write ``Z Y X`` data so that SimpleITK (and nnU-Net) read ``spacing_zyx`` back in numpy order."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))  # SimpleITK wants x, y, z
    sitk.WriteImage(image, str(path), useCompression=True)
