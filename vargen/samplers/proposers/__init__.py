"""Proposers: what guesses the next tokens for the one loop (:mod:`vargen.samplers.loop`).

* :class:`~.jacobi.JacobiProposer`: SJD's previous-iteration drafts (inits, MC-SJD coupling);
* :class:`~.draft.DraftModelProposer` / :class:`~.draft.DraftHeadProposer`: a chain from a draft model or
  an EAGLE-style draft head;
* :class:`~vargen.samplers.loop.NoProposer`: plain AR.
"""
from ..loop import NoProposer, Proposal, Proposer
from .draft import DraftHeadProposer, DraftModelProposer, draft_proposer
from .jacobi import JacobiProposer

__all__ = ["Proposal", "Proposer", "NoProposer", "JacobiProposer", "DraftModelProposer", "DraftHeadProposer",
           "draft_proposer"]
