"""Screenshots of the page for the README: docs/screenshot-desktop.png and docs/screenshot-phone.png.

A digit is written on the real page (mouse on desktop, touch on the phone), the real
service reads it, and the page is captured with its answer.

    python bench/screenshots.py --model-uri model-store        # starts the service
    python bench/screenshots.py --url http://127.0.0.1:8080    # a running one
"""
import argparse
import os
import tempfile

from bench.handwriting import DIGITS, place
from bench.page import draw_mouse, draw_touch, launch_browser, wait_for_answer
from bench import ROOT
from bench.servers import service


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-uri", default=os.environ.get("MODEL_URI", "model-store"),
                   help="model store the started service loads (env MODEL_URI; default model-store)")
    p.add_argument("--url", default=None, help="use a running service instead of starting one")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs"))
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    # With a feedback store, so the page offers its "Wrong?" control as deployed.
    feedback = tempfile.mkdtemp(prefix="screenshots-feedback-")
    server = None if args.url else service(os.path.abspath(args.model_uri), FEEDBACK_URI=feedback).wait_ready()
    url = (args.url or server.url).rstrip("/")
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = launch_browser(pw)

            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(url)
            draw_mouse(page, place(DIGITS[3], 0.72))
            read = wait_for_answer(page)
            page.mouse.move(5, 5)  # no hover highlight in the picture
            path = os.path.join(args.out_dir, "screenshot-desktop.png")
            page.screenshot(path=path)
            print(f"{path}: reads {read}")
            page.context.close()

            context = browser.new_context(viewport={"width": 360, "height": 640}, device_scale_factor=2,
                                          is_mobile=True, has_touch=True)
            page = context.new_page()
            page.goto(url)
            draw_touch(page, context.new_cdp_session(page), place(DIGITS[4], 0.7))
            read = wait_for_answer(page)
            path = os.path.join(args.out_dir, "screenshot-phone.png")
            page.screenshot(path=path)
            print(f"{path}: reads {read}")
            browser.close()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
