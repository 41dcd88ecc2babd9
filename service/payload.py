"""Read the image(s) out of a /predict request, in whichever of the three accepted forms.

- JSON ``{"image": "<data URL or bare base64>", "preview": false}`` or ``{"images": [...]}``;
- multipart/form-data with a file field ``image`` (and an optional ``preview`` field);
- a raw ``image/png`` or ``image/jpeg`` body (``?preview=true`` for the preview).
"""
import base64
import binascii
import json

from .errors import ApiError

RAW_TYPES = ("image/png", "image/jpeg", "image/jpg")
DATA_URL_TYPES = ("image/png", "image/jpeg", "image/jpg", "")
TRUE = ("1", "true", "yes", "on")
ACCEPTED = ("send JSON {\"image\": \"<base64 PNG>\"}, multipart/form-data with a file field 'image', "
            "or a raw image/png or image/jpeg body")


def parse_predict(request, max_batch):
    """Return (list of image bytes, preview flag, is_batch). Raises ApiError 400/413/415."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        return _from_json(request.get_data(cache=False), max_batch)
    if mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise ApiError("missing_field", "the multipart form has no file field 'image'; "
                                                 "attach the PNG or JPEG as 'image'")
        return [upload.read()], request.form.get("preview", "").lower() in TRUE, False
    if mimetype in RAW_TYPES:
        return [request.get_data(cache=False)], request.args.get("preview", "").lower() in TRUE, False
    what = f"Content-Type {mimetype!r}" if mimetype else "a request without a Content-Type"
    raise ApiError("unsupported_media_type", f"{what} is not accepted; {ACCEPTED}")


def load_json(raw, hint="send a JSON object"):
    """The parsed JSON body; 400 invalid_json for anything json.loads cannot take."""
    try:
        return json.loads(raw)
    except ValueError as e:  # includes bad UTF-8
        raise ApiError("invalid_json", f"the body is not valid JSON ({str(e)[:200]}); {hint}") from None
    except RecursionError:
        raise ApiError("invalid_json", "the body is JSON nested too deeply to read; send a flat object") from None


def _from_json(raw, max_batch):
    body = load_json(raw, ACCEPTED)
    if not isinstance(body, dict):
        raise ApiError("invalid_json", f"the body must be a JSON object, not {type(body).__name__}; "
                                            "send {\"image\": \"<base64 PNG>\"}")
    preview = body.get("preview", False)
    if not isinstance(preview, bool):
        raise ApiError("invalid_field", f"'preview' must be true or false, not {json.dumps(preview)[:40]}")
    if "images" in body:
        if "image" in body:
            raise ApiError("invalid_field", "send either 'image' (one) or 'images' (a batch), not both")
        images = body["images"]
        if not isinstance(images, list) or not images:
            raise ApiError("invalid_field", "'images' must be a non-empty list of base64 PNG/JPEG strings")
        if len(images) > max_batch:
            raise ApiError("too_many_images", f"{len(images)} images in one batch; send at most {max_batch}")
        return [decode_image_field(s, f"images[{i}]") for i, s in enumerate(images)], preview, True
    if "image" not in body:
        raise ApiError("missing_field", "the JSON has no 'image' field; "
                                             "send {\"image\": \"data:image/png;base64,...\"}")
    return [decode_image_field(body["image"], "image")], preview, False


def decode_image_field(value, name):
    """A data URL or bare base64 string -> bytes. ``name`` is used in error messages."""
    if not isinstance(value, str):
        raise ApiError("invalid_field", f"'{name}' must be a string holding a data URL or base64 PNG/JPEG, "
                                             f"not {type(value).__name__}")
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        mime = header[5:].split(";")[0].strip().lower()
        if not comma or not header.endswith(";base64"):
            raise ApiError("invalid_base64", f"'{name}' is not a base64 data URL; "
                                                  "send data:image/png;base64,...")
        if mime not in DATA_URL_TYPES:
            raise ApiError("unsupported_image_format", f"'{name}' is a {mime} data URL; send a PNG or JPEG")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError("invalid_base64", f"'{name}' is not valid base64 ({e}); "
                                              "send the PNG or JPEG bytes base64-encoded") from None
