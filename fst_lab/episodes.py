"""Episodes as the RL loss sees them: a rollout's tokens and which of them the model generated.

A multi-turn rollout (model turn, tool observation, model turn, ...) becomes one completion whose
observation tokens are masked out (TRL's ``env_mask``), so the gradient flows only through tokens the
model sampled, each conditioned on the conversation it saw.

    >>> ep = episode_tokens(tokenizer, trajectory)
    >>> ep.prompt_ids, ep.completion_ids, ep.mask      # mask: 1 = model token, 0 = observation
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.rollout import Trajectory

log = logging.getLogger(__name__)


@dataclass
class Episode:
    """One rollout as the trainer sees it: prompt ids, completion ids, and a mask (1 = model token)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    mask: list[int]
    multi_turn: bool = False
    fallback: bool = False  # the chat template was not prefix-stable: only the last turn is trained

    @property
    def model_tokens(self) -> int:
        return sum(self.mask)

    @property
    def observation_tokens(self) -> int:
        return len(self.mask) - sum(self.mask)


_warned_fallback = False


def _observation_text(tokenizer, prev, nxt) -> str | None:
    """The text between turn ``prev``'s generated tokens and turn ``nxt``'s generation: end of the
    assistant turn, tool observations, next assistant header. None if the template re-rendered the
    earlier conversation differently (not prefix-stable)."""
    if not nxt.prompt.startswith(prev.prompt):
        return None
    rest = nxt.prompt[len(prev.prompt):]
    content = prev.completion
    if rest.startswith(content):
        after = rest[len(content):]
    else:  # templates that strip the assistant content
        stripped = content.strip()
        i = rest.find(stripped)
        if not stripped or i < 0 or rest[:i].strip():
            return None
        after = rest[i + len(stripped):]
    eos = tokenizer.eos_token
    ids = prev.completion_ids
    # The sampled ids already end with EOS: don't count the template's copy of it as an observation.
    if ids and eos and ids[-1] == tokenizer.eos_token_id and after.startswith(eos):
        after = after[len(eos):]
    return after


def episode_tokens(tokenizer, traj: "Trajectory") -> Episode:
    """Token view of a trajectory for the loss.

    Single turn: prompt = the rendered harness prompt, completion = the sampled ids. Multi-turn:
    completion = turn-1 ids + observation tokens + turn-2 ids + ..., mask 0 on observations (the
    tool results and chat-template glue between turns), so the gradient flows only through tokens the
    model sampled, each conditioned on the conversation it saw. When the chat template is not
    prefix-stable the episode falls back to its last turn (with a one-time warning).
    """
    global _warned_fallback

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    turns = traj.turns
    if not turns:
        raise ValueError(f"trajectory {traj.example_id}/{traj.harness_id} has no turns")
    first = turns[0]
    completion = list(first.completion_ids)
    mask = [1] * len(completion)
    for prev, nxt in zip(turns, turns[1:]):
        obs = _observation_text(tokenizer, prev, nxt)
        if obs is None:
            if not _warned_fallback:
                log.warning("chat template is not prefix-stable across turns; multi-turn episodes train on "
                            "their last turn only")
                _warned_fallback = True
            last = turns[-1]
            return Episode(enc(last.prompt), list(last.completion_ids), [1] * len(last.completion_ids),
                           multi_turn=True, fallback=True)
        obs_ids = enc(obs)
        completion += obs_ids + list(nxt.completion_ids)
        mask += [0] * len(obs_ids) + [1] * len(nxt.completion_ids)
    if not completion:  # an empty generation: keep TRL's tensors non-empty (masked out)
        completion, mask = [tokenizer.eos_token_id], [0]
    return Episode(enc(first.prompt), completion, mask, multi_turn=len(turns) > 1)
