"""Where a benchmark's images live, and how a model fills in the missing ones (resumably).

Two folder layouts:

- `FlatLayout` (HiCoPrompt): ``<dir>/<id>.png`` for one image per prompt, or
  ``<dir>/<id>_<k>.png`` for several (k = 0, 1, ...); generation writes ``<id>_<k>.png``.
- `GenEvalLayout`: ``<dir>/<id>/samples/<k:04d>.png`` with ``<dir>/<id>/metadata.jsonl``, the
  layout GenEval's own scripts read, so generated images can be scored by both.

`generate_missing` draws only the images that are not on disk yet, each from its own seed
(`image_seed(seed, id, k)`), so a killed run resumes where it stopped and gives the same images
as an uninterrupted one (up to the float rounding of a different batch size, at most one step of
a channel value in the tests); files are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vrl.bench.data import BenchItem

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class FlatLayout:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def target(self, item: BenchItem, k: int) -> Path:
        return self.folder / f"{item.id}_{k}.png"

    def find(self, items: Sequence[BenchItem]) -> dict[str, list[Path]]:
        """Existing images per item id, in k order (`<id>.png` first)."""
        ids = {it.id for it in items}
        found: dict[str, list[tuple[int, Path]]] = {}
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                    continue
                stem = path.stem
                if stem in ids:
                    found.setdefault(stem, []).append((-1, path))
                    continue
                head, _, k = stem.rpartition("_")
                if head in ids and k.isdigit():
                    found.setdefault(head, []).append((int(k), path))
        return {i: [p for _, p in sorted(v)] for i, v in found.items()}

    def prepare(self, item: BenchItem) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)


class GenEvalLayout:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def target(self, item: BenchItem, k: int) -> Path:
        return self.folder / item.id / "samples" / f"{k:04d}.png"

    def find(self, items: Sequence[BenchItem]) -> dict[str, list[Path]]:
        found = {}
        for item in items:
            samples = self.folder / item.id / "samples"
            if samples.is_dir():
                paths = sorted(p for p in samples.iterdir() if re.fullmatch(r"\d+\.png", p.name))
                if paths:
                    found[item.id] = paths
        return found

    def prepare(self, item: BenchItem) -> None:
        (self.folder / item.id / "samples").mkdir(parents=True, exist_ok=True)
        meta = item.extra.get("metadata")
        if meta is not None:
            (self.folder / item.id / "metadata.jsonl").write_text(json.dumps(meta) + "\n")


def image_seed(seed: int, item_id: str, k: int) -> int:
    """The seed of image k of a prompt: independent of batching, order and resumption."""
    return zlib.crc32(f"{seed}/{item_id}/{k}".encode())


def missing_images(
    items: Sequence[BenchItem], layout, images_per_prompt: int
) -> list[tuple[BenchItem, int]]:
    return [
        (item, k)
        for item in items
        for k in range(images_per_prompt)
        if not layout.target(item, k).exists()
    ]


def load_generator(
    model: str,
    lora: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
    lora_scale: float | None = None,
):
    """A FlowMatchingAdapter for a diffusers folder, hub id in the local cache or tiny-random:sd3,
    with a LoRA folder written by `vrl train diffusion` (final/) loaded onto it.

    diffusers applies a LoRA file without adapter metadata at scale 1 (alpha = rank), whatever
    alpha it was trained with. For such a file the scale is `lora_scale` if given, else
    alpha / r from the run's `config.yaml` next to the folder (model.lora), else 1 with a warning.
    """
    import torch

    from vrl.models.diffusion import FlowMatchingAdapter
    from vrl.models.paths import resolve_pipeline_path

    adapter = FlowMatchingAdapter.from_pretrained(
        resolve_pipeline_path(model), dtype=getattr(torch, dtype), device=device
    )
    if lora:
        adapter.pipeline.load_lora_weights(lora)
        scale = lora_scale if lora_scale is not None else _trained_lora_scale(Path(lora))
        if scale is not None and scale != 1.0:
            adapter.pipeline.set_adapters(adapter.pipeline.get_active_adapters(), [scale])
    adapter.transformer.eval()
    return adapter


def _trained_lora_scale(folder: Path) -> float | None:
    """alpha / r for a LoRA file without metadata, from the training run's config; else None."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
    if files:
        with safe_open(str(files[0]), framework="pt") as f:
            if "lora_adapter_metadata" in (f.metadata() or {}):
                return None  # diffusers reads alpha from the file itself
    for config in (folder / "config.yaml", folder.parent / "config.yaml"):
        if config.is_file():
            import yaml

            lora = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("lora") or {}
            if lora.get("r") and lora.get("alpha"):
                return float(lora["alpha"]) / float(lora["r"])
    logger.warning(
        "LoRA %s records no alpha and no run config.yaml was found: applied at scale 1 "
        "(pass --lora-scale alpha/r if it was trained with alpha != r)",
        folder,
    )
    return None


def generate_missing(
    items: Sequence[BenchItem],
    layout,
    adapter_or_loader: Any,
    *,
    images_per_prompt: int = 1,
    height: int = 512,
    width: int = 512,
    num_steps: int = 28,
    guidance_scale: float = 4.5,
    seed: int = 0,
    batch_size: int = 4,
    chain: bool = False,
    strength: float = 0.7,
    prompt_form: str = "own",
    context: str = "auto",
    references: str = "all",
    positions: str = "kontext",
    boxes: str = "none",
    save_units: bool = False,
) -> int:
    """Draw every missing image (deterministic ODE sampling); returns how many were written.

    `adapter_or_loader` is an adapter or a no-argument callable returning one, called only if
    something is missing, so a finished run never loads the model. With `chain=True` each
    prompt goes through the evaluation chain of synthesis (`vrl.hicogen.chain.eval_chain`: one
    unit per subject, then the whole prompt; `context`, `references`, `positions` and
    `strength` as `chain.*` of the trainer), all images of a prompt in one batch from the seed
    of its image 0, its unit prompts in `prompt_form` (`Scene.unit_prompt`), its unit passes
    shown their boxes with ``boxes="world"``. `save_units` also keeps each chain's unit images, as
    ``units/<id>_<k>_unit<j>.png`` under the layout's folder (j = 1, 2, ...), so that what a later
    pass kept of an earlier unit can be read (`unit_path`).
    """
    todo = missing_images(items, layout, images_per_prompt)
    if not todo:
        return 0
    adapter = adapter_or_loader() if callable(adapter_or_loader) else adapter_or_loader
    written = 0
    if chain:
        from vrl.hicogen.chain import resolve_context

        settings = {
            "strength": strength, "prompt_form": prompt_form, "references": references,
            "context": resolve_context(adapter, context), "positions": positions,
            "boxes": boxes,
        }  # fmt: skip
        units = layout.folder / "units" if save_units else None
        by_item: dict[str, list[int]] = {}
        for item, k in todo:
            by_item.setdefault(item.id, []).append(k)
        for item in items:
            if item.id in by_item:
                written += _chain_one(adapter, layout, item, by_item[item.id], images_per_prompt,
                                      height, width, num_steps, guidance_scale, seed,
                                      settings, units)  # fmt: skip
                logger.info("generated %s (%d/%d)", item.id, written, len(todo))
        return written
    for lo in range(0, len(todo), batch_size):
        batch = todo[lo : lo + batch_size]
        images = _sample(adapter, [it.prompt for it, _ in batch],
                         [image_seed(seed, it.id, k) for it, k in batch],
                         height, width, num_steps, guidance_scale)  # fmt: skip
        for (item, k), image in zip(batch, images, strict=True):
            layout.prepare(item)
            _save(image, layout.target(item, k))
            written += 1
        logger.info("generated %d/%d images", written, len(todo))
    return written


def _sample(adapter, prompts, seeds, height, width, num_steps, guidance_scale):
    import torch

    from vrl.samplers import sample

    device = adapter.device
    sigmas = adapter.sigmas(num_steps, height, width).to(device)
    gens = [torch.Generator(device).manual_seed(s) for s in seeds]
    with torch.no_grad():
        embeds = adapter.encode_prompts(prompts)
        noise = adapter.initial_noise(len(prompts), height, width, gens)
        traj = sample(
            adapter.velocity_fn(adapter.transformer, embeds, guidance_scale), noise, sigmas,
            step="ode", store_trajectory=False,
        )  # fmt: skip
        return adapter.decode(traj.final, (height, width))  # (B, 3, H, W) in [0, 1]


def unit_path(folder: str | Path, item_id: str, k: int, unit: int) -> Path:
    """Where `generate_missing(..., save_units=True)` keeps unit `unit` (1-based) of image k."""
    return Path(folder) / "units" / f"{item_id}_{k}_unit{unit}.png"


def _chain_one(
    adapter, layout, item, ks, n, height, width, num_steps, guidance, seed, settings, units
):
    from vrl.hicogen.chain import eval_chain

    _, result = eval_chain(
        adapter, adapter.transformer, item.scene, item.prompt,
        seed=image_seed(seed, item.id, 0), images=n, height=height, width=width,
        num_steps=num_steps, guidance_scale=guidance, **settings,
    )  # fmt: skip
    layout.prepare(item)
    if units is not None:
        units.mkdir(parents=True, exist_ok=True)
    for k in ks:  # the whole batch is drawn so that image k does not depend on what was missing
        if units is not None:
            for j, step in enumerate(result.steps[:-1], start=1):
                _save(step.image[k], unit_path(units.parent, item.id, k, j))
        _save(result.final[k], layout.target(item, k))
    return len(ks)


def _save(image, path: Path) -> None:
    from torchvision.utils import save_image

    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_image(image.float().clamp(0, 1), tmp)
    tmp.replace(path)
