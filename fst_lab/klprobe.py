"""KL of the policy to its start weights on a fixed probe set: the "how far have the weights moved" curve.

    >>> kl = probe_kl(model, base, tokenizer, harness, examples, cache={})   # mean per-token KL, nats

Each probe sequence is a prompt plus the reference response ``"Answer: <answer>"``; the KL is exact
(over the full vocabulary) and averaged over the response positions. Log-softmax and the KL sum run in
float32; the forwards run in the model's own numerics (under ``precision: bf16`` the trainer has wrapped
the model's forward in bfloat16 autocast, so the probe sees what sampling and training see).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from fst_lab.backends import reference
from fst_lab.models import render_chat

if TYPE_CHECKING:  # pragma: no cover
    from fst_lab.harness import Harness
    from fst_lab.tasks.base import Example


def probe_kl(model, base, tokenizer, harness: "Harness | None", examples: Sequence["Example"],
             cache: dict[Any, Any]) -> float:
    """Mean per-token KL(model || base) on ``examples`` rendered with ``harness`` (None: the bare question).

    ``base`` is a frozen start-weights model, or None for a PEFT ``model`` (its adapter-disabled view).
    The base log-probs never change, so they are kept in ``cache`` per (harness, example, length).
    """
    import torch

    tok = tokenizer
    device = next(model.parameters()).device

    def response_logprobs(m, ids, n):  # log-softmax at the n positions that predict the response
        logits = m(input_ids=ids, logits_to_keep=n + 1).logits[0, :-1]
        return torch.log_softmax(logits.float(), -1)

    was_training = model.training
    model.eval()
    kls = []
    try:
        with torch.no_grad():
            for ex in examples:
                if harness is not None:
                    messages, tools = harness.render(ex.inputs)
                else:
                    messages = [{"role": "user", "content": "\n\n".join(str(v) for v in ex.inputs.values())}]
                    tools = None
                p_ids = tok(render_chat(tok, messages, tools), add_special_tokens=False)["input_ids"]
                t_ids = tok(f"Answer: {ex.answer}{tok.eos_token or ''}", add_special_tokens=False)["input_ids"]
                ids = torch.tensor([p_ids + t_ids], device=device)
                logp = response_logprobs(model, ids, len(t_ids))
                key = (harness.id if harness is not None else None, ex.id, len(p_ids) + len(t_ids))
                logq = cache.get(key)
                if logq is None:
                    if base is None:
                        with reference(model):
                            logq = response_logprobs(model, ids, len(t_ids))
                    else:
                        logq = response_logprobs(base, ids, len(t_ids))
                    cache[key] = logq
                kls.append((logp.exp() * (logp - logq)).sum(-1))
    finally:
        model.train(was_training)
    return float(torch.cat(kls).mean()) if kls else float("nan")
