"""The Gradio page of `vrl demo`: type a complex prompt, watch the chain of synthesis build it.

    vrl demo                                   # the default model (DEFAULT_MODEL), CPU, port 7860
    vrl demo --model /ckpt/sd3.5-medium --lora runs/hicogen/final --port 8080

The page shows the decomposition of the prompt into synthesis units, every intermediate image of
the chain as it is made, the final image, and the hierarchical reward (global, subject and relation
levels, with a row per subject and per relation). With --lora, the base model and the RL-tuned
adapter run side by side on the same prompt and seed.

Safety: model and adapter paths are fixed at launch (the page has only text, number and choice
inputs), weights load from safetensors only, every request is checked against `Limits` and refused
with a message when outside them, and one queue with a concurrency limit feeds the model.

The API (``/generate``, what the page calls) takes the page's values as JSON, in the order of
`make_generate`'s arguments. They reach `check_request` as sent (Gradio's own per-component
preprocessing is off: it crashed on a string or a NaN, answering ``{"error": null}``), so one
check decides, and a refused call is answered with a message that names the argument
(``seed: must be a whole number from 0 to 2147483647, got 'abc'``; too few values: the missing
ones) and logged as one line on the console, without a traceback. SIGTERM removes the demo's
image folder before the process exits.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

from vrl.demo.engine import (
    LABELS,
    SAMPLERS,
    SCHEDULE_KINDS,
    DemoEngine,
    DemoSetupError,
    DemoState,
    LimitError,
    check_request,
)
from vrl.demo.rewards import REWARD_NOTES, format_score
from vrl.demo.settings import DemoSettings, settings_from_args
from vrl.hicogen.chain import resolve_context

logger = logging.getLogger(__name__)

DISPLAY_MIN_SIDE = 256
"""Images smaller than this are enlarged (nearest neighbour, so pixels stay crisp) for display."""
LEVEL_COLUMNS = ["model", "image", "global", "subject", "relation", "total"]


# ---------------------------------------------------------------------- rendering (pure)


def to_pil(images: torch.Tensor):
    """(B, 3, H, W) in [0, 1] -> one PIL image, the batch side by side, enlarged when tiny."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images.float().clamp(0, 1), nrow=len(images), padding=2, pad_value=1.0)
    array = (grid * 255).round().byte().permute(1, 2, 0).numpy()  # (H, W', 3)
    image = Image.fromarray(array)
    factor = math.ceil(DISPLAY_MIN_SIDE / images.shape[-2])
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return image


def units_table(state: DemoState) -> pd.DataFrame:
    dec = state.decomposition
    rows = [
        [f"unit {k + 1}", ", ".join(dec.scene.noun_phrase(s) for s in unit.subjects), prompt]
        for k, (unit, prompt) in enumerate(zip(dec.units, dec.unit_prompts, strict=True))
    ]
    final = "chain: every unit on the canvas" if state.request.chain else "chain off: one pass"
    rows.append(["final", final, dec.final_prompt])
    return pd.DataFrame(rows, columns=["pass", "subjects", "prompt"])


class ImageFiles:
    """Hands the page its images as PNG files named by their content, each written once.

    The handler yields after every pass and each update repeats the images made so far. Given
    PIL images, Gradio re-encodes each one into its cache on every update, rewriting in place a
    file the browser may be fetching (the server then sends more bytes than the length it
    announced, and the image never arrives). A file path is copied into Gradio's cache only when
    its content is new, so handing out paths whose files never change removes that race."""

    def __init__(self, root: str | Path | None = None):
        # Gradio serves files under the system temp directory, so that is the default home
        self.root = Path(tempfile.mkdtemp(prefix="vrl-demo-", dir=root))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)

    def cleanup(self) -> None:
        """Remove the folder and its images now (also done at interpreter exit)."""
        self._cleanup()

    def save(self, images: torch.Tensor) -> str:
        buffer = io.BytesIO()
        to_pil(images).save(buffer, format="PNG")
        data = buffer.getvalue()
        path = self.root / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.exists():  # written under another name, then renamed: never seen half-made
            staging = path.with_name(f".{path.name}.{os.getpid()}")
            staging.write_bytes(data)
            os.replace(staging, path)
        return str(path)


def chain_gallery(state: DemoState, label: str, files: ImageFiles) -> list[tuple[str, str]]:
    n = len(state.decomposition.units)
    items = []
    for k, result in enumerate(state.passes.get(label, [])):
        name = f"unit {k + 1}" if state.request.chain and k < n else "final"
        items.append((files.save(result.images), f"{name}: {result.prompt}"))
    return items


def levels_table(state: DemoState) -> pd.DataFrame:
    rows = []
    for label, report in state.reports.items():
        for i in range(state.request.num_images):
            levels = [report.levels.get(level, [None] * (i + 1))[i] for level in LEVEL_COLUMNS[2:]]
            rows.append([LABELS[label], i + 1, *(format_score(v) for v in levels)])
    return pd.DataFrame(rows, columns=LEVEL_COLUMNS)


def rows_table(state: DemoState, kind: str) -> pd.DataFrame:
    """Per-subject ("subjects") or per-relation ("relations") rows of every scored image."""
    rows, columns = [], ["model", "image"]
    scene = state.decomposition.scene
    ids = {s.id for s in scene.subjects}
    for label, report in state.reports.items():
        for i, image_rows in enumerate(getattr(report, kind)):
            for row in image_rows:
                for key in row:
                    if key not in columns:
                        columns.append(key)
                row = dict(row)
                if row.get("subject") in ids:  # a subject id: say which shape it is
                    row["subject"] = scene.noun_phrase(row["subject"])
                rows.append({"model": LABELS[label], "image": i + 1, **row})
    if len(columns) == 2:
        columns.append("subject" if kind == "subjects" else "relation")
    table = [
        [row[c] if c in ("model", "image") else _cell(row.get(c)) for c in columns] for row in rows
    ]
    return pd.DataFrame(table, columns=columns)


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else format_score(value)


def status_text(state: DemoState) -> str:
    r = state.request
    sampler = "ODE" if r.sampler == "ode" else f"SDE, {r.schedule} noise {r.noise_level:g}"
    head = (
        f"**{state.message}** ({state.done}/{state.total}) · seed {r.seed}, {r.steps} steps, "
        f"guidance {r.guidance:g}, {sampler}, {r.num_images} image(s)"
    )
    return "\n\n".join([head, *(f"Note: {note}" for note in state.notes)])


# ---------------------------------------------------------------------- the page


def header_text(engine: DemoEngine) -> str:
    s, limits = engine.settings, engine.settings.limits
    adapter = f"`{s.lora}` (side by side with the base model)" if s.lora else "none"
    in_context = resolve_context(engine.adapter, "auto") == "in_context"
    how = (
        "from noise with the earlier unit images as reference tokens (in context), then a final "
        "pass composes the whole prompt from every unit image"
        if in_context
        else "on the canvas made so far (image-to-image), then a final pass composes the whole "
        "prompt"
    )
    lines = [
        "# vrl demo: HiCoGen's chain of synthesis",
        f"A complex prompt is decomposed into synthesis units; each unit is drawn {how}. The "
        "reward grades the final image at three levels: global, subject and relation.",
        f"Model `{s.model}` at {engine.size}x{engine.size} · adapter {adapter} · reward "
        f"{engine.reward_name} ({REWARD_NOTES.get(engine.reward_name, 'custom')}).",
        f"Limits: {limits.max_prompt_chars} characters, {limits.max_steps} steps, "
        f"{limits.max_images} images, guidance {limits.max_guidance:g}, {limits.max_units} units.",
    ]
    lines += [f"Note: {note}" for note in engine.notes]
    return "\n\n".join(lines)


def refuse(message: str) -> gr.Error:
    """The error that refuses an API call: its message for the client, one line on the console
    (Gradio would print the traceback of any error raised with print_exception)."""
    logger.warning("refused a request: %s", message)
    try:
        return gr.Error(message, title="Request refused", print_exception=False)
    except TypeError:  # Gradio before 5.9 has no print_exception (and prints the traceback)
        return gr.Error(message, title="Request refused")


class DemoBlocks(gr.Blocks):
    """gr.Blocks whose API refuses a call with too few values by naming the missing arguments.

    Gradio checks the count itself, before any handler runs, with a ValueError: the client gets
    ``{"error": null}`` and the console a traceback. Extra values are ignored, as Gradio does."""

    def validate_inputs(self, block_fn, inputs: list[Any]) -> None:
        wanted = len(block_fn.inputs)
        if len(inputs) < wanted:
            names = _argument_names(block_fn.fn, wanted)
            raise refuse(
                f"{', '.join(names[len(inputs) :])}: missing; this call takes {wanted} values "
                f"({', '.join(names)}), got {len(inputs)}"
            )
        super().validate_inputs(block_fn, inputs)


def _argument_names(fn, n: int) -> list[str]:
    """The names of a handler's first `n` arguments (the API's), or "value k" where unknown."""
    try:
        names = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        names = []
    return [names[k] if k < len(names) else f"value {k + 1}" for k in range(n)]


def make_generate(engine: DemoEngine, files: ImageFiles):
    """The "Generate" handler: checks the request, then yields the page's outputs pass by pass.

    Its argument names are the API's (refusals name them)."""
    limits = engine.settings.limits

    def generate(
        prompt,
        seed,
        steps,
        guidance,
        chain,
        sampler,
        schedule,
        noise_level,
        strength,
        num_images,
        progress=gr.Progress(),  # noqa: B008 (Gradio's way of asking for a progress bar)
    ):
        try:
            request = check_request(
                limits, prompt, seed, steps, guidance, chain, sampler, schedule,
                noise_level, strength, num_images,
            )  # fmt: skip
        except LimitError as err:
            raise refuse(str(err)) from None
        try:
            for state in engine.generate(request):
                progress((state.done, state.total), desc=state.message)
                yield render(state, engine.labels, files)
        except Exception as err:  # say what went wrong on the page; the server keeps serving
            logger.exception("generation failed")
            raise gr.Error(f"Generation failed: {type(err).__name__}: {err}") from None

    return generate


def render(state: DemoState, labels: tuple[str, ...], files: ImageFiles) -> tuple:
    """The outputs in `build_app`'s order: status, units, scene, chains, finals, reward tables."""
    chains = [chain_gallery(state, label, files) for label in labels]
    finals = [state.final(label) for label in labels]
    finals = [None if f is None else files.save(f) for f in finals]
    if len(labels) == 1:  # the hidden base column
        chains.append([])
        finals.append(None)
    return (
        status_text(state),
        units_table(state),
        state.decomposition.scene.to_json(indent=2),
        *chains,
        *finals,
        levels_table(state),
        rows_table(state, "subjects"),
        rows_table(state, "relations"),
    )


def build_app(
    settings: DemoSettings | None = None,
    *,
    engine: DemoEngine | None = None,
    files: ImageFiles | None = None,
) -> gr.Blocks:
    """The demo page for `settings` (the model loads here unless a built `engine` is given);
    its images go to `files` (default: a new folder under the system temp directory)."""
    settings = settings or DemoSettings()
    engine = engine or DemoEngine(settings)
    limits = settings.limits
    first, second = (LABELS[label] for label in (*engine.labels, "base")[:2])

    with DemoBlocks(title="vrl demo: chain of synthesis", analytics_enabled=False) as app:
        gr.Markdown(header_text(engine), elem_id="header")
        with gr.Row():
            prompt = gr.Textbox(
                label=f"Prompt (at most {limits.max_prompt_chars} characters)",
                placeholder="a small red circle to the left of a large blue square",
                lines=2,
                scale=5,
                elem_id="prompt",
            )
            button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                steps = gr.Slider(
                    1, limits.max_steps, value=settings.steps, step=1, label="Steps per pass"
                )
                guidance = gr.Slider(
                    1.0,
                    limits.max_guidance,
                    value=settings.guidance,
                    step=0.5,
                    label="Guidance (1 = off)",
                )
                num_images = gr.Slider(1, limits.max_images, value=1, step=1, label="Images")
            with gr.Row():
                chain = gr.Checkbox(value=True, label="Chain of synthesis (off: one pass)")
                sampler = gr.Radio(
                    list(SAMPLERS), value="sde", label="Sampler (ode: deterministic)"
                )
                schedule = gr.Radio(list(SCHEDULE_KINDS), value="decaying", label="Noise schedule")
                noise_level = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="Noise level")
                strength = gr.Slider(
                    0.05, 1.0, value=0.7, step=0.05, label="Context strength (re-noising)"
                )
        gr.Examples([[p] for p in engine.examples], inputs=[prompt], label="Examples")
        status = gr.Markdown(elem_id="status")
        units = gr.Dataframe(
            headers=["pass", "subjects", "prompt"],
            label="Decomposition into synthesis units",
            interactive=False,
            wrap=True,
            elem_id="units",
        )
        with gr.Row():
            with gr.Column():
                chain_a = gr.Gallery(
                    label=f"Chain of synthesis ({first})",
                    columns=4,
                    height="auto",
                    object_fit="contain",  # whole images, never cropped
                    elem_id="chain-a",
                )
                final_a = gr.Image(
                    label=f"Final image ({first})", type="filepath", height=300, elem_id="final-a"
                )
            with gr.Column(visible=engine.has_lora):
                chain_b = gr.Gallery(
                    label=f"Chain of synthesis ({second})",
                    columns=4,
                    height="auto",
                    object_fit="contain",  # whole images, never cropped
                    elem_id="chain-b",
                )
                final_b = gr.Image(
                    label=f"Final image ({second})", type="filepath", height=300, elem_id="final-b"
                )
        levels = gr.Dataframe(
            headers=LEVEL_COLUMNS,
            label="Hierarchical reward (per level; total = weighted sum)",
            interactive=False,
            elem_id="reward-levels",
        )
        subjects = gr.Dataframe(
            label="Subject level: a row per subject",
            interactive=False,
            elem_id="reward-subjects",
        )
        relations = gr.Dataframe(
            label="Relation level: a row per relation",
            interactive=False,
            wrap=True,
            elem_id="reward-relations",
        )
        with gr.Accordion("Scene (JSON)", open=False):
            scene_json = gr.Code(language="json", interactive=False)

        inputs = [prompt, seed, steps, guidance, chain, sampler, schedule, noise_level, strength]
        inputs.append(num_images)
        outputs = [status, units, scene_json, chain_a, chain_b, final_a, final_b]
        outputs += [levels, subjects, relations]
        generate = make_generate(engine, files or ImageFiles())
        for trigger, api_name in ((button.click, "generate"), (prompt.submit, False)):
            trigger(
                generate,
                inputs,
                outputs,
                api_name=api_name,
                concurrency_limit=limits.concurrency,
                concurrency_id="generate",  # the button and Enter share one limit
                preprocess=False,  # the values as sent: check_request checks them all
            )
    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_queue)
    return app


def launch(
    settings: DemoSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    engine: DemoEngine | None = None,
    block: bool = True,
):
    """Build and serve the page; with `block=False` it serves from a background thread and the
    caller closes it (`app.close()`). Returns (app, local url).

    With `block=True` (`vrl demo`) the process is the server's: SIGTERM then removes the image
    folder and exits (`remove_on_sigterm`)."""
    files = ImageFiles()
    if block and threading.current_thread() is threading.main_thread():  # signals go there
        remove_on_sigterm(files)
    app = build_app(settings, engine=engine, files=files)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=not block,
        max_file_size="1mb",  # the page has no upload input: refuse anything sizeable
        ssr_mode=False,
        quiet=not block,
    )
    return app, url


def remove_on_sigterm(files: ImageFiles) -> None:
    """On SIGTERM (kill, systemd, docker stop), remove the image folder, then exit with status
    143 (128 + SIGTERM) as the signal would have. Without a handler SIGTERM ends the process at
    once, skipping the exit-time cleanup that Ctrl-C gets, and the folder stays behind."""

    def handler(signum, frame):
        files.cleanup()
        print(f"vrl demo: terminated; removed {files.root}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)  # the server's thread is a daemon: nothing waits on it

    signal.signal(signal.SIGTERM, handler)


def run_from_args(args: argparse.Namespace) -> int:
    """`vrl demo ...`: load, serve until interrupted; setup errors are one line, exit 2."""
    try:
        settings = settings_from_args(args)
        engine = DemoEngine(settings)
    except (DemoSetupError, ValueError) as err:
        print(f"vrl demo: {err}", file=sys.stderr)
        return 2
    launch(settings, host=args.host, port=args.port, share=args.share == "yes", engine=engine)
    return 0


if __name__ == "__main__":
    from vrl.demo.settings import add_demo_arguments

    parser = argparse.ArgumentParser(prog="python -m vrl.demo.app", description=__doc__)
    add_demo_arguments(parser)
    sys.exit(run_from_args(parser.parse_args()))
