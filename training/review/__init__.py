"""The review page: reviewers approve or reject the corrections people sent, in the browser.

``python -m training.review --help`` runs it. One module a job:

- ``auth``: who may use it, a one-time sign-in link locally or Identity-Aware Proxy's
  signed header on GKE, and the CSRF check on every write;
- ``queue``: the feedback store's records in memory, refreshed by reading only new ones,
  filtered, sorted (most suspicious first, by training.feedback.triage) and paged;
  decisions go through training.feedback.decisions, the same create-only markers as the
  review CLI;
- ``app``: the HTTP app (Flask), the page's JSON API;
- ``server``: the store, the queue, the sign-in scheme and the app under Granian;
- ``page/``: the page, plain HTML, CSS and a JavaScript module, no build step.
"""
