"""The one grammar of a Hub dataset split in a parameter: ``hub:<dataset>/<config>/<split>``
(an empty config for none: ``hub:<dataset>//<split>``; a training corpus may add ``#<field>``).
Training corpora (:mod:`lib.data.corpus`) and 07's paired tasks (:mod:`lib.eval.tasks`) both read it.

    parse_hub("hub:klue/ynat/train#title", with_field=True)   # ('klue', 'ynat', 'train', 'title')
"""
from __future__ import annotations

HUB_PREFIX = "hub:"


def is_hub(value) -> bool:
    return isinstance(value, str) and value.startswith(HUB_PREFIX)


def parse_hub(value: str, with_field: bool = False) -> tuple[str, str | None, str, str | None]:
    """``(dataset, config or None, split, field or None)``; ValueError naming the form otherwise."""
    body, field = value[len(HUB_PREFIX):], ""
    if with_field:
        body, _, field = body.partition("#")
    parts = body.rsplit("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[2]:
        form = "hub:<dataset>/<config>/<split>" + ("[#field]" if with_field else "")
        raise ValueError(f"{value!r} is not '{form}' (use an empty config for none: 'hub:<dataset>//<split>')")
    return parts[0], parts[1] or None, parts[2], field or None
