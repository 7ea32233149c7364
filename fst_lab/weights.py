"""Weights: a session's slow weights — the live policy, the frozen start weights, and the learner.

Until the first slow step the live policy is the loaded (or injected) model; from then on it is the
slow learner's policy, trained in place. The start weights are loaded again from the model name, or,
for an injected policy, copied before training first touches it.

    >>> w = Weights("fst-local/SmolLM2-135M-Instruct")
    >>> w.policy, w.base()         # the same weights until the learner trains
"""

from __future__ import annotations

import copy
from typing import Any, Callable


class Weights:
    def __init__(self, model: str, policy=None):
        self.model = model
        self.learner = None  # the SlowLearner, once the first slow step (or a resume) needs it
        self._policy = policy
        self._injected = policy is not None
        self._base = None

    @property
    def policy(self):
        """The live policy (trained weights once the slow loop exists)."""
        if self.learner is not None:
            return self.learner.policy
        if self._policy is None:
            from fst_lab.models import load_policy

            self._policy = load_policy(self.model)
        return self._policy

    def base(self):
        """The start weights, frozen (for the channel ablation and KL)."""
        if self._base is None:
            if not self._injected:
                from fst_lab.models import load_policy

                self._base = load_policy(self.model)
            elif self.learner is not None:
                self._base = self.learner.base_policy()
            else:
                self._base = copy.deepcopy(self._policy)
        return self._base

    def start_learning(self, make: Callable[[Any], Any]):
        """The learner, built once by ``make(live_policy)`` (an injected policy is copied first: the learner
        trains it in place and the start weights must survive)."""
        if self.learner is None:
            if self._injected and self._base is None:
                self._base = copy.deepcopy(self._policy)
            self.learner = make(self.policy)
        return self.learner

    def copy(self):
        """A trainable copy of the live policy."""
        return self.learner.copy_policy() if self.learner is not None else copy.deepcopy(self.policy)

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()
            self.learner = None
