"""``spr show``: draw chosen vs rejected descriptions on their image, with the scores behind the choice.

A preference dataset is only as good as its pairs, and a pair is judged fastest by looking at it: the
query region, the annotated objects, the boxes each description claims, and why one scored higher
(semantic parts, localization matches, boxes the parser had to drop, the objects each text names and
whether the annotations support them). Boxes are parsed with :mod:`spr_plugin.families.box_formats` and
mentions found with :func:`spr_plugin.scoring.mentions.describe`, the same code the scorer used, so the
picture shows what was scored. Mentions are judged with the names the shown pairs' regions record.

Output: ``<out>/pair_000.png`` ... (one image per pair, chosen left, rejected right) and ``<out>/index.html``
embedding them with the full texts.
"""

from __future__ import annotations

import html
import io
import itertools
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from spr_plugin.core.errors import SPRError
from spr_plugin.core.images import region_image, require_image
from spr_plugin.core.jsonl import read_jsonl
from spr_plugin.core.options import DEFAULT_BOX_FORMAT
from spr_plugin.core.owned import OwnedFiles, write_bytes
from spr_plugin.core.paths import ImageRoots, make_real_dirs, require_real_inside
from spr_plugin.core.records import Box, PreferencePair, Region, ScoredCandidate
from spr_plugin.families.box_formats import BoxFormat
from spr_plugin.families.profiles import get_box_format, profile_of
from spr_plugin.scoring.mentions import ABSENT, IMAGE, UNJUDGED, Vocabulary, describe
from spr_plugin.settings import ShowConfig

CHOSEN_COLOR = (0, 170, 60)
REJECTED_COLOR = (220, 40, 40)
REGION_COLOR = (255, 200, 0)
GT_COLOR = (150, 150, 150)
PANEL_WIDTH = 560
MAX_TEXT_LINES = 24  # longer descriptions are cut in the PNG; index.html has the full text
FONT_SIZE = 15


@dataclass(frozen=True)
class ShowResult:
    html: Path
    pngs: list[Path]
    pairs: int


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def find_image(pair: PreferencePair, config: ShowConfig, copy: str | None = None) -> Path:
    """The pair's image: its original path if it lies under the image folders (``--images``, default the pairs
    file's folder), else the copy an export placed in the dataset folder (``copy``: the dataset path the export
    recorded next to the pair in ``<name>.pairs.jsonl``; copies are named by content, so an image id and a file
    name alone do not identify one). A pairs file is data from elsewhere: it never makes the viewer render (and
    publish as a PNG) an image outside those folders."""
    region = pair.region
    roots = ImageRoots.of(config.images)
    refused: SPRError | None = None
    try:
        original = region_image(region, roots)
        if original.is_file():
            return original
    except SPRError as exc:
        refused = exc
    folders = [Path(config.dataset_dir)] if config.dataset_dir else []
    folders.append(config.pairs_file().parent)
    for folder in folders if _is_export_copy(copy, config.pairs_file()) else []:
        try:
            found = region_image(replace(region, image_path=copy), ImageRoots([folder], "the dataset folder"))
        except SPRError:
            continue
        if found.is_file():
            return found
    if refused is not None:
        raise refused
    raise SPRError(f"image of region {region.region_id} not found: {region.image_path} (nor an exported copy)")


def _is_export_copy(copy: str | None, pairs_file: Path) -> bool:
    """``copy`` is where an export of the pairs file's dataset places its images (``<name>/images/<file>`` next to
    ``<name>.pairs.jsonl``): only there does the viewer look. Any other value (a pairs file from elsewhere naming
    ``secret.jpg`` beside it) is not a copy, and nothing but ``--images`` names where originals are read."""
    if not isinstance(copy, str) or not pairs_file.name.endswith(".pairs.jsonl"):
        return False
    name = pairs_file.name.removesuffix(".pairs.jsonl")
    parts = copy.split("/")
    return len(parts) == 3 and parts[0] == name and parts[1] == "images" and parts[2] not in ("", ".", "..")


def _pair_and_copy(d: dict) -> tuple[PreferencePair, str | None]:
    copy = d.get("dataset_image")
    return PreferencePair.from_dict(d), copy if isinstance(copy, str) else None


def annotated_text(side: ScoredCandidate, fmt: BoxFormat, width: int, height: int) -> str:
    """The description with each grounded unit written ``label [k]`` (k numbers the drawn boxes) and
    ``label [dropped]`` where the parser rejected the box, so text and picture can be read together."""
    text = side.candidate.text
    parse = fmt.parse(text, width, height)
    out, cursor, k, seen = [], 0, 0, set()
    for phrase in parse.phrases:
        start, end = phrase.span
        if phrase.span in seen:  # one reference with several boxes shares a span
            if phrase.box is not None:
                out[-1] += f"[{k}]"
                k += 1
            continue
        seen.add(phrase.span)
        if start < cursor:
            continue
        out.append(text[cursor:start])
        if phrase.box is not None:
            out.append(f"{phrase.label or 'box'} [{k}]")
            k += 1
        else:
            out.append(f"{phrase.label} [dropped]" if phrase.label else "[dropped box]")
        cursor = end
    out.append(text[cursor:])
    plain = "".join(out)
    for token in profile_of(fmt).scrubbed_tokens:
        plain = plain.replace(token, " ")
    return " ".join(plain.split())


def score_lines(side: ScoredCandidate) -> list[str]:
    """The score and its parts, one fact per line."""
    loc, sem = side.localization, side.semantic
    matches = ", ".join(f"gt{m.gt_index}<->[{m.pred_index}] IoU {m.iou:.2f}" for m in loc.matches) or "none"
    drops = ", ".join(f"{k}: {v}" for k, v in sorted(side.parse_dropped.items())) or "none"
    parts = getattr(sem, "parts", None) or {"text_region": sem.text_region, "phrase_objects": sem.phrase_objects}
    grounded = getattr(loc, "n_grounded", 0)
    return [
        f"score {side.score:.3f}  ({'refined' if side.refined else 'initial'}, variant {side.candidate.variant})",
        f"S_sem {sem.score:.3f} ({sem.scorer}): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()),
        f"S_loc {loc.score:.3f} ({loc.metric}): n_gt {loc.n_gt}, n_pred {loc.n_pred}, matched {len(loc.matches)}"
        + (f", {grounded} boxes from the grounder" if grounded else ""),
        f"matches: {matches}",
        f"parse drops: {drops}",
    ]


def mention_lines(side: ScoredCandidate, region: Region, fmt: BoxFormat, vocabulary: Vocabulary | None = None) -> list[str]:
    """What the text names and carries, measured as the statistics measure it (one fact per line)."""
    facts = describe(side.candidate.text, region, fmt, vocabulary)
    absent = sorted({m.name for m in facts.mentions if m.status == ABSENT})
    lines = [
        f"names: {len(facts.mentions)} objects; absent from the image {facts.hallucinated}"
        + (f" ({', '.join(absent)})" if absent else "")
        + f", ungrounded {facts.ungrounded}, elsewhere in the image {facts.count(IMAGE)}, unknown {facts.count(UNJUDGED)}",
        f"box debris: {facts.debris}" + (f"; hallucination penalty {side.penalty:.3f}" if side.penalty else ""),
    ]
    if side.refinement:
        r = side.refinement
        lines.append(
            f"refinement ({r.get('policy')}): snapped {r.get('snapped', 0)}, corrected {r.get('corrected', 0)}, "
            f"ungrounded {r.get('ungrounded', 0)}, absent mentions removed {r.get('hallucinations_removed', 0)}, "
            f"plain mentions grounded {r.get('plain_grounded', 0)}, debris removed {r.get('debris_removed', 0)}"
        )
    return lines


def _draw_box(
    draw: ImageDraw.ImageDraw, box: Box, scale: float, color, width: int, label: str | None, font, below: bool = False
) -> None:
    """A box outline with its label on a filled tag: above the box, or ``below`` it (annotations), so the
    tags of a description's boxes and of the annotated objects do not cover each other."""
    xy = [box.x1 * scale, box.y1 * scale, box.x2 * scale, box.y2 * scale]
    draw.rectangle(xy, outline=color, width=width)
    if label:
        tx = xy[0] + 2
        ty = xy[3] + 2 if below else max(0, xy[1] - FONT_SIZE - 4)
        bbox = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle([bbox[0] - 2, bbox[1] - 1, bbox[2] + 2, bbox[3] + 1], fill=color)
        draw.text((tx, ty), label, fill=(255, 255, 255), font=font)


def render_panel(
    image: Image.Image,
    pair: PreferencePair,
    side: ScoredCandidate,
    chosen: bool,
    fmt: BoxFormat,
    vocabulary: Vocabulary | None = None,
) -> Image.Image:
    """One side of a pair: the image with region, annotated objects and this side's boxes, then its scores."""
    region = pair.region
    font, small = _font(), _font(FONT_SIZE - 2)
    scale = PANEL_WIDTH / region.width
    pic = image.convert("RGB").resize((PANEL_WIDTH, max(1, round(region.height * scale))))
    draw = ImageDraw.Draw(pic)
    for i, obj in enumerate(region.objects):
        _draw_box(draw, obj.box, scale, GT_COLOR, 1, f"gt{i}", small, below=True)
    _draw_box(draw, region.box, scale, REGION_COLOR, 3, None, font)
    color = CHOSEN_COLOR if chosen else REJECTED_COLOR
    for k, box in enumerate(fmt.parse(side.candidate.text, region.width, region.height).boxes):
        _draw_box(draw, box, scale, color, 3, f"[{k}]", font)

    lines = []
    for line in [*score_lines(side), *mention_lines(side, region, fmt, vocabulary)]:
        lines += textwrap.wrap(line, 70, subsequent_indent="    ")
    lines.append("")
    lines += textwrap.wrap(annotated_text(side, fmt, region.width, region.height), 70)
    lines = lines[:MAX_TEXT_LINES]
    panel = Image.new("RGB", (PANEL_WIDTH, pic.height + 2 * FONT_SIZE + 20 + len(lines) * (FONT_SIZE + 2)), "white")
    panel.paste(pic, (0, 0))
    draw = ImageDraw.Draw(panel)
    y = pic.height + 6
    draw.rectangle([0, pic.height, PANEL_WIDTH - 1, pic.height + 4], fill=color)
    draw.text((6, y), ("CHOSEN" if chosen else "REJECTED") + f"  region {region.region_id}", fill=color, font=font)
    y += FONT_SIZE + 6
    for line in lines:
        draw.text((6, y), line, fill=(0, 0, 0), font=small)
        y += FONT_SIZE + 2
    return panel


def render_pair(pair: PreferencePair, image_path: Path, fmt: BoxFormat, vocabulary: Vocabulary | None = None) -> Image.Image:
    """Chosen (green) left, rejected (red) right, with a header naming the margin."""
    with Image.open(image_path) as im:
        im.load()
        left = render_panel(im, pair, pair.chosen, True, fmt, vocabulary)
        right = render_panel(im, pair, pair.rejected, False, fmt, vocabulary)
    header = 28
    out = Image.new("RGB", (left.width + right.width + 10, max(left.height, right.height) + header), (235, 235, 235))
    ImageDraw.Draw(out).text(
        (6, 6),
        f"region {pair.region.region_id}  image {image_path.name}  margin {pair.margin:.3f}  "
        f"(yellow: query region, grey: annotated objects)",
        fill=(0, 0, 0),
        font=_font(),
    )
    out.paste(left, (0, header))
    out.paste(right, (left.width + 10, header))
    return out


def _html_side(side: ScoredCandidate, chosen: bool, region: Region, fmt: BoxFormat, vocabulary: Vocabulary | None) -> str:
    color = "#00aa3c" if chosen else "#dc2828"
    lines = [*score_lines(side), *mention_lines(side, region, fmt, vocabulary)]
    rows = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    title = "chosen" if chosen else "rejected"
    return (
        f'<div class="side" style="border-top:4px solid {color}"><b>{title}</b><ul>{rows}</ul>'
        f"<pre>{html.escape(side.candidate.text)}</pre></div>"
    )


def _recorded_box_format(config: ShowConfig) -> BoxFormat:
    """The parser of the pairs' boxes: the format and frame they were scored in (Qwen2.5-VL pixels need the frame)."""
    from spr_plugin.llamafactory.recipe_check import recorded_pairs_format

    recorded = recorded_pairs_format(config.pairs_file())
    if recorded is None:
        return get_box_format(config.box_format or DEFAULT_BOX_FORMAT)
    name, frame, where = recorded
    if config.box_format is not None and config.box_format != name:
        raise SPRError(
            f"{config.pairs_file()} was scored in box format {name} ({where}) but --box-format says {config.box_format}"
        )
    return get_box_format(name, frame)


def show_pairs(config: ShowConfig) -> ShowResult:
    """Render the first ``config.n`` pairs of the pairs file into ``config.out``."""
    if config.pairs is None:  # a received dataset folder whose pairs file links out: its texts would be rendered and shared
        require_real_inside(config.dataset_dir, config.pairs_file(), where=f"--dataset-dir {config.dataset_dir}")
    fmt = _recorded_box_format(config)
    rows = list(itertools.islice(read_jsonl(config.pairs_file(), _pair_and_copy, what="pair"), config.n))
    pairs = [pair for pair, _ in rows]
    if not pairs:
        raise SPRError(f"{config.pairs_file()} holds no pairs")
    out = Path(config.out)
    images = []
    for pair, copy in rows:  # every image checked before anything is written
        image = find_image(pair, config, copy)
        require_image(image, f"image of region {pair.region.region_id}")  # a bomb or a non-image is one line
        images.append(image)
    names = [f"pair_{i:03d}.png" for i in range(len(pairs))]
    record = _check_view_files(out, [*names, "index.html"])
    make_real_dirs(out, ".", "--out folder")
    record.begin(dict.fromkeys([*names, "index.html"]))
    vocabulary = Vocabulary.of_regions(p.region for p in pairs)
    from spr_plugin.llamafactory.recipe_check import recorded_vocabulary

    recorded = recorded_vocabulary(config.pairs_file())  # the names that judged the pairs: the same counts as the summary
    if recorded is not None:
        vocabulary = vocabulary.union(Vocabulary.of(recorded))
    pngs, sections, written = [], [], {}
    for i, (pair, image) in enumerate(zip(pairs, images)):
        png = out / names[i]
        buffer = io.BytesIO()
        render_pair(pair, image, fmt, vocabulary).save(buffer, format="PNG")
        written[names[i]] = write_bytes(out, names[i], buffer.getvalue(), "view file")
        record.wrote(names[i], written[names[i]], save=False)
        pngs.append(png)
        sections.append(
            f"<section><h2>{i}: region {html.escape(pair.region.region_id)} (margin {pair.margin:.3f})</h2>"
            f'<img src="{png.name}" alt="pair {i}"><div class="sides">'
            f"{_html_side(pair.chosen, True, pair.region, fmt, vocabulary)}"
            f"{_html_side(pair.rejected, False, pair.region, fmt, vocabulary)}</div></section>"
        )
    chosen = [describe(p.chosen.candidate.text, p.region, fmt, vocabulary) for p in pairs]
    rejected = [describe(p.rejected.candidate.text, p.region, fmt, vocabulary) for p in pairs]
    totals = (
        f"In these {len(pairs)} pairs, chosen / rejected answers naming an object absent from the image: "
        f"{sum(f.hallucinated > 0 for f in chosen)} / {sum(f.hallucinated > 0 for f in rejected)}; with an ungrounded "
        f"mention of a region object: {sum(f.ungrounded > 0 for f in chosen)} / {sum(f.ungrounded > 0 for f in rejected)}; "
        f"with box debris: {sum(f.debris > 0 for f in chosen)} / {sum(f.debris > 0 for f in rejected)}; boxes per answer: "
        f"{sum(f.boxes for f in chosen) / len(pairs):.2f} / {sum(f.boxes for f in rejected) / len(pairs):.2f}."
    )
    page = out / "index.html"
    text = (
        "<!doctype html><html><head><meta charset='utf-8'><title>SPR pairs</title><style>"
        "body{font-family:sans-serif;margin:1em}img{max-width:100%}.sides{display:flex;gap:1em}"
        ".side{flex:1}pre{white-space:pre-wrap;word-break:break-all;background:#f4f4f4;padding:.5em}"
        "</style></head><body>"
        f"<h1>SPR preference pairs ({len(pairs)} from {html.escape(str(config.pairs_file()))})</h1>"
        "<p>Green: boxes of the chosen description; red: the rejected one; yellow: the query region; "
        "grey: annotated objects (gtN). [k] numbers a description's parsed boxes in text order.</p>"
        f"<p class='totals'>{html.escape(totals)}</p>" + "".join(sections) + "</body></html>\n"
    )
    written["index.html"] = write_bytes(out, "index.html", text.encode("utf-8"), "view file")
    record.wrote("index.html", written["index.html"], save=False)
    record.finish(written, {})
    return ShowResult(page, pngs, len(pairs))


#: The record of the files ``spr show`` wrote in its ``--out`` folder (:class:`spr_plugin.core.owned.OwnedFiles`).
VIEW_RECORD = ".spr-show.spr-files.json"


def _check_view_files(out: Path, names: list[str]) -> OwnedFiles:
    """The ``--out`` folder's record, once every file the view writes is known to be replaceable: absent, or the very
    file an earlier ``spr show`` wrote there. A user's ``index.html`` (or a symlink: its target is the user's file) is
    refused in one line before anything is written, never replaced or written through."""
    return OwnedFiles.load_replaceable(out, VIEW_RECORD, names, "view file")
