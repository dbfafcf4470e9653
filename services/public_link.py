"""The address other people can open this app at, or why there is none, in plain words.

Why a pure function: where the app runs is known only from its environment (a Hugging Face Space sets
``SPACE_HOST`` and ``SPACE_ID``) and from whether Gradio made a share link at launch. Taking both as
arguments lets the Share tab show the link and lets tests check every case without a network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_HOST = re.compile(r"^[A-Za-z0-9.-]+$")
_SPACE_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

NO_LINK = ("**No public link from this computer:** it is not reachable from the internet, so a link to it "
           "would not open for anyone else. To share the app itself, run it as a Hugging Face Space (its "
           "address is then your link), or ask whoever started it to start it with the share option on. "
           "To share what you trained, push the model or a demo Space below: it gets its own public address.")


@dataclass(frozen=True)
class PublicLink:
    """``url`` is None when this app has no public address; ``text`` says what it is, or why not."""

    url: str | None
    text: str


def public_link(env: Mapping[str, str], share_url: str | None = None) -> PublicLink:
    """The link to this app: the Space's own address, else Gradio's share link, else an explanation.

    ``env`` is the process environment (``os.environ`` in the app); ``share_url`` is the running
    Blocks' ``share_url`` (None unless the app was launched with sharing on).
    """
    host = (env.get("SPACE_HOST") or "").strip().split(",")[0].strip()
    space = (env.get("SPACE_ID") or "").strip()
    if host and _HOST.match(host):
        url = f"https://{host}"
        return PublicLink(url, f"**Your link:** {url} — the address of this Space. Anyone who can see the Space "
                               "can open it (a private Space only for you and your organisation).")
    if space and _SPACE_ID.match(space):
        url = f"https://huggingface.co/spaces/{space}"
        return PublicLink(url, f"**Your link:** {url} — this Space's page on Hugging Face.")
    if share_url and share_url.startswith("https://"):
        return PublicLink(share_url, f"**Your link:** {share_url} — a temporary public link to this app, valid "
                                     "while it runs (Gradio share links expire after about a week).")
    return PublicLink(None, NO_LINK)
