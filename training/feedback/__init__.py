"""The corrections people send (POST /feedback): reviewed, triaged, and read for training.

One module a job, each the one definition of what it does:

- ``records``: reading a feedback store (service/contract.py has its layout): the index of
  record ids and days from listings, reading and checking records;
- ``decisions``: review states (pending, approved, rejected) and create-only decisions;
- ``triage``: suspicion scores per record, client and network;
- ``loader``: what a retraining reads: trusted (approved, by default), bounded and fair;
- ``cli`` and ``sheet``: the review CLI, ``python -m training.feedback --help``, and its
  contact sheet.

The review CLI, the review page and the training loader all import these.
"""
