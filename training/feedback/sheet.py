"""Drawing records for a reviewer: a contact sheet PNG, and one digit as text for a terminal.

The contact sheet: tiles of SHEET_COLUMNS a row, in the order given, each the digit
(scaled up, white ink on black) over a two-line caption, "predicted -> label" and the
id's first ID_PREFIX hex digits, enough to name it to show, approve or reject. A
rejected tile is framed and captioned in red, a pending one in grey, an approved one in
the ink colour.
"""
import math
import os
import tempfile

from service import contract
from training.feedback.decisions import PENDING, REJECTED

ID_PREFIX = 8       # the fewest hex digits that may name a record
SHEET_COLUMNS = 10
SHEET_PAD = 6       # px around every tile; a rejected tile's red frame lies in it
SHEET_CAPTION = 28  # px of caption under a tile's digit
SHEET_HEADER = 20   # px of title line above the tiles
SHEET_SCALE = 4
BACKGROUND, INK, REJECTED_RED, PENDING_GREY = (48, 48, 48), (235, 235, 235), (235, 50, 50), (150, 150, 150)
ASCII_RAMP = " .:-=+*#%@"  # show's digit: blank is no ink, @ full ink


def ascii_art(pixels):
    """The digit as framed text, two characters a pixel (a terminal cell is about twice as
    tall as it is wide); any ink at all shows, from '.' up to '@' for full ink."""
    steps = len(ASCII_RAMP) - 1
    rows = ["".join(ASCII_RAMP[0 if v == 0 else 1 + (int(v) - 1) * steps // contract.PIXEL_MAX] * 2 for v in row)
            for row in pixels]
    edge = "+" + "-" * (2 * contract.SIDE) + "+"
    return "\n".join([edge, *(f"|{row}|" for row in rows), edge])


def sheet_size(tiles, scale, min_width=0):
    """(width, height) in px of a contact sheet of ``tiles`` tiles at ``scale``."""
    side = contract.SIDE * scale
    columns, rows = min(tiles, SHEET_COLUMNS), math.ceil(tiles / SHEET_COLUMNS)
    return (max(SHEET_PAD + columns * (side + SHEET_PAD), min_width),
            SHEET_HEADER + rows * (side + SHEET_CAPTION + SHEET_PAD))


def tile_origin(index, scale):
    """(x, y) in px of the top left pixel of tile ``index``'s digit on a contact sheet."""
    side = contract.SIDE * scale
    row, column = divmod(index, SHEET_COLUMNS)
    return SHEET_PAD + column * (side + SHEET_PAD), SHEET_HEADER + row * (side + SHEET_CAPTION + SHEET_PAD)


def _caption(draw, x, y, entry, rejected, colour, font):
    """"predicted → label" with the arrow drawn (Pillow's built-in font has no →), a cross
    after it when rejected, and the id's first ID_PREFIX hex digits below."""
    predicted = "-" if entry.get("predicted") is None else str(entry.get("predicted"))
    draw.text((x, y), predicted, fill=colour, font=font)
    left, mid = x + draw.textlength(predicted, font=font) + 3, y + 6
    draw.line([(left, mid), (left + 10, mid)], fill=colour)
    draw.line([(left + 7, mid - 3), (left + 10, mid), (left + 7, mid + 3)], fill=colour)
    label = str(entry.get("label"))
    draw.text((left + 14, y), label, fill=colour, font=font)
    if rejected:
        cross = left + 20 + draw.textlength(label, font=font)
        draw.line([(cross, mid - 4), (cross + 8, mid + 4)], fill=colour, width=2)
        draw.line([(cross, mid + 4), (cross + 8, mid - 4)], fill=colour, width=2)
    draw.text((x, y + 13), entry.id[:ID_PREFIX], fill=colour, font=font)


def contact_sheet(chosen, states, scale, title):
    """A Pillow RGB image: one tile per Entry of ``chosen`` (readable ones), in order, rows
    of SHEET_COLUMNS; each digit's pixels as they are (white ink on black) scaled up by
    ``scale`` with nearest neighbour; by ``states`` ({id: state}), a rejected one framed
    and captioned in red, a pending one captioned in grey."""
    from PIL import Image, ImageDraw, ImageFont  # only the sheet needs Pillow

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sheet = Image.new("RGB", sheet_size(len(chosen), scale, 2 * SHEET_PAD + math.ceil(measure.textlength(title, font))),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((SHEET_PAD, 4), title, fill=INK, font=font)
    side = contract.SIDE * scale
    for index, entry in enumerate(chosen):
        x, y = tile_origin(index, scale)
        sheet.paste(Image.fromarray(entry.pixels).resize((side, side), Image.Resampling.NEAREST), (x, y))
        state = states.get(entry.id, PENDING)
        colour = REJECTED_RED if state == REJECTED else PENDING_GREY if state == PENDING else INK
        if state == REJECTED:
            draw.rectangle([x - 3, y - 3, x + side + 2, y + side + 2], outline=REJECTED_RED, width=2)
        _caption(draw, x, y + side + 3, entry, state == REJECTED, colour, font)
    return sheet


def save_png(image, path):
    """Write ``image`` to ``path`` whole or not at all: a temporary file beside it, renamed.
    OSError says why it could not be written."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".sheet-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
