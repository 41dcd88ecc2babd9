"""The drawing page in a real Chromium, audited with axe-core: no serious or critical violation
in each state a person sees (empty, an answer with its bars, "Wrong?" open with the digits),
on a desktop and on a phone-sized screen.

The review page's audit is in tests/test_review_page.py, with its sign-in.
"""
import pytest
from playwright.sync_api import expect, sync_playwright

from bench.handwriting import DIGITS, place
from bench.page import draw_mouse, launch_browser, wait_for_answer
from frontend_helpers import Service, axe_violations

pytestmark = pytest.mark.slow

VIEWPORTS = [{"width": 1100, "height": 800}, {"width": 360, "height": 640}]


@pytest.fixture(scope="module")
def service(trained_store, tmp_path_factory):
    with Service(trained_store, log_dir=str(tmp_path_factory.mktemp("a11y-service")),
                 env={"FEEDBACK_URI": str(tmp_path_factory.mktemp("a11y-feedback"))}) as svc:
        yield svc


def test_the_drawing_page_has_no_serious_accessibility_violations(service):
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            for viewport in VIEWPORTS:
                page = browser.new_context(viewport=viewport).new_page()
                page.goto(service.url)
                expect(page.get_by_test_id("model-version")).not_to_have_text("loading…")
                assert axe_violations(page) == [], (viewport, "empty pad")
                draw_mouse(page, place(DIGITS[7], 0.7, (0.5, 0.5)))
                page.get_by_test_id("predict").click()
                assert wait_for_answer(page)
                expect(page.get_by_test_id("wrong")).to_be_visible()
                assert axe_violations(page) == [], (viewport, "an answer, its bars and Wrong?")
                page.get_by_test_id("wrong").click()
                expect(page.get_by_test_id("correct-1")).to_be_visible()
                assert axe_violations(page) == [], (viewport, "the digits to correct with")
                page.context.close()
            # The audit finds what it should: a button with no name is a critical violation.
            page = browser.new_page()
            page.goto(service.url)
            page.evaluate("() => document.body.append(document.createElement('button'))")
            assert "button-name" in [v["id"] for v in axe_violations(page)]
        finally:
            browser.close()
