"""Pieces every tab shares: forms generated from settings, friendly errors, model caches.

Why here: the forms must come from the engine's setting definitions (``describe``), never be
retyped per tab, and every user-facing failure must reach the browser as one clear sentence
while the app stays up. Models come from the one model cache of ``services.model_cache``, shared
with the CLI and the demo Space.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from core.settings import SettingInfo, Settings, SettingsError, base_type, describe
from engine.data.errors import DatasetError
from engine.jobs import JobError
from engine.limits import LimitError, limits
from engine.models import ModelError
from engine.workspace import AccessError, AccessPolicy, Workspace

log = logging.getLogger("tune_studio.ui")

# A slider only when its range has few enough positions to be usable with a mouse.
MAX_SLIDER_POSITIONS = 2000

#: Exceptions whose message is already written for the user (engine convention).
USER_ERRORS: tuple[type[BaseException], ...] = (
    SettingsError, DatasetError, JobError, ModelError, AccessError, FileNotFoundError, ValueError,
)

#: How long an error toast stays (seconds): long enough to read a message that asks for an action, then it
#: fades by itself so it never stays over the status lines under it.
ERROR_TOAST_S = 15


# ----------------------------------------------------------------------------------------- errors


def user_error(exc: BaseException, title: str = "That did not work") -> gr.Error:
    """A gr.Error shown for :data:`ERROR_TOAST_S` seconds (then it fades): the browser shows it, API clients
    receive it."""
    if isinstance(exc, USER_ERRORS):
        message = str(exc)
    else:
        log.exception("Unexpected error in a UI handler")
        message = (f"Something unexpected went wrong ({type(exc).__name__}: {exc}). "
                   "The app is still running and nothing you had is lost; try again, or check the server log.")
    # The toast renders HTML, so "<image>" must be escaped; quotes need not be (API clients read them as typed).
    return gr.Error(html.escape(hide_paths(message), quote=False), duration=ERROR_TOAST_S, title=title)


#: An absolute path (two or more parts) that is not part of a URL: what :func:`hide_paths` shortens.
_SERVER_PATH = re.compile(r"(?<![\w.:/~\\-])/(?:[^\s/'\"`<>|]+/)+([^\s/'\"`<>|,;:)]*)")


def hide_paths(text: str) -> str:
    """Server paths in a message, reduced to their last part: ``/data/tune_studio/.../docs`` -> ``docs``.

    Why: messages name files and collections, never where the server keeps them. The handlers already
    word their messages that way; this catches what a library's exception text may still carry.
    """
    return _SERVER_PATH.sub(lambda match: match.group(1) or "…", text)


@contextmanager
def _errors_translated(on_error: Callable[[Exception], BaseException] | None) -> Iterator[None]:
    """Raise ``on_error(exc)`` instead of ``exc``; a ``gr.Error`` raised on purpose passes through unchanged."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as exc:
        if on_error is None:
            raise
        raise on_error(exc) from exc


def wrap_calls(fn: Callable[..., Any], *, before: Callable[[], None] | None = None,
               on_error: Callable[[Exception], BaseException] | None = None) -> Callable[..., Any]:
    """``fn`` with ``before()`` run first and its exceptions translated by ``on_error`` (gr.Error passes through).

    Why one helper: Gradio reads a handler's signature (kept by ``functools.wraps``) and decides from the kind of
    function (plain, generator, coroutine or async generator) how to call and stream it, so every wrapper must
    be the same kind as ``fn``. The demo guard and the friendly errors both wrap through here.
    """
    start = before or (lambda: None)
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            with _errors_translated(on_error):
                start()
                async for item in fn(*args, **kwargs):
                    yield item
        return agen_wrapper
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro_wrapper(*args: Any, **kwargs: Any) -> Any:
            with _errors_translated(on_error):
                start()
                return await fn(*args, **kwargs)
        return coro_wrapper
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with _errors_translated(on_error):
                start()
                yield from fn(*args, **kwargs)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _errors_translated(on_error):
            start()
            return fn(*args, **kwargs)
    return wrapper


def friendly_errors(title: str, translate: Callable[[Exception], Exception] | None = None,
                    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn any exception of a handler into a titled gr.Error, so no click ever shows a raw trace.

    Works for plain functions, generators (streaming answers) and async ones (job followers). A ``gr.Error``
    raised on purpose passes through unchanged. ``translate`` first maps an exception to one whose message is
    meant for the user (a tab's own library errors), so it is shown as such and not as "something unexpected".
    """

    def to_user_error(exc: Exception) -> BaseException:
        return user_error(translate(exc) if translate else exc, title)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        return wrap_calls(fn, on_error=to_user_error)

    return wrap


def signed_in_user(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
    """The visitor's user name: password sign-in (``request.username``), else "Sign in with Hugging Face".

    The Hugging Face profile is Gradio's public ``gr.OAuthProfile | None`` handler parameter: Gradio fills it
    from the sign-in session and passes None when there is none or it has expired, so nothing here reads the
    session itself.
    """
    username = getattr(request, "username", None) if request is not None else None
    if username:
        return str(username)
    return (profile.username or None) if profile is not None else None


def visitor_of(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """Who a request is from, for per-visitor caps: the signed-in (or OAuth) user, else the client address.

    Never the session hash: a reload makes a new one, so a cap keyed by it would reset on F5. Behind a
    Space's proxy the client address is the first hop of ``X-Forwarded-For``; elsewhere that header could
    be forged by the client, so the socket's peer address is used.
    """
    user = signed_in_user(request, profile)
    if user:
        return f"user:{user}"
    if request is None:
        return "local"
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "") if os.environ.get("SPACE_ID") else ""
    address = forwarded.split(",")[0].strip() or getattr(getattr(request, "client", None), "host", None)
    return f"ip:{address or 'unknown'}"


def owner_of(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
    """Whose workspace a request works in: the signed-in user, the demo's workspace, or one local owner.

    A shared local owner (no sign-in configured) is what lets a second browser or a refreshed page see
    the running job. With sign-in configured, an anonymous request is refused with a clear message.
    """
    try:
        return AccessPolicy.from_env().owner_for(signed_in_user(request, profile))
    except AccessError as exc:
        raise gr.Error(str(exc), title="Please sign in", duration=ERROR_TOAST_S) from exc


def workspace_of(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> Workspace:
    """The visitor's workspace: every handler that reads or writes user data goes through this."""
    return Workspace(owner_of(request, profile))


#: The one temporary folder the app hands downloads out of, and how long a copy is kept there.
SERVED_ROOT_NAME = "tune-studio-downloads"
SERVED_MAX_AGE_S = 3600


def served_root() -> Path:
    """The app's own temporary root for downloads (under the system temp dir, which Gradio may serve from)."""
    root = Path(tempfile.gettempdir()) / SERVED_ROOT_NAME
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def prune_served(max_age_s: float = SERVED_MAX_AGE_S) -> int:
    """Delete download folders older than ``max_age_s``; returns how many. Gradio has copied them into its
    own cache when the download was handed out, so an old copy is never needed again."""
    cutoff = time.time() - max_age_s
    removed = 0
    for folder in served_root().iterdir():
        try:
            old = folder.lstat().st_mtime < cutoff
        except OSError:
            continue
        if old:
            shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
            removed += 1
    return removed


def served_folder() -> Path:
    """A fresh folder for one download in the app's temporary root; copies over an hour old go first."""
    prune_served()
    return Path(tempfile.mkdtemp(prefix="dl-", dir=served_root()))


def served_copy(path: str | Path) -> str:
    """Hand a file to the browser as a copy in a fresh folder of the app's download root.

    Why: the data directory is not served (``allowed_paths`` does not include it), so one visitor can
    never fetch another's files by guessing a path; Gradio serves only the files the app hands out.
    Copies are deleted after an hour (:func:`prune_served`), so downloads do not fill the disk.
    """
    source = Path(path)
    target = served_folder() / source.name
    shutil.copy2(source, target)
    return str(target)


def require_write(action: str) -> None:
    """Refuse training/indexing in the read-only demo with a message that says why (see :func:`refuse_in_demo`)."""
    refuse_in_demo(WRITES, action)

# ----------------------------------------------------------------------------------------- forms


@dataclass
class SettingsForm:
    """Controls generated for one settings class; ``names`` and ``components`` are in the same order."""

    cls: type[Settings]
    infos: list[SettingInfo]
    controls: dict[str, gr.components.Component] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.controls)

    @property
    def components(self) -> list[gr.components.Component]:
        return list(self.controls.values())

    def values(self, args: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
        """Form values (in ``components`` order) back into a dict the settings class accepts."""
        by_name = {info.name: info for info in self.infos}
        return {name: form_value(by_name[name], value) for name, value in zip(self.names, args, strict=True)}

    def to_settings(self, args: tuple[Any, ...] | list[Any], **fixed: Any) -> Settings:
        """Validate the form; a bad value raises SettingsError naming the setting."""
        return self.cls.from_dict({**self.values(args), **fixed})

    def updates_for(self, settings: Settings) -> list[Any]:
        """New values for every control, e.g. after choosing a preset."""
        return [display_value(getattr(settings, name)) for name in self.names]


def display_value(value: Any) -> Any:
    """None shows as an empty box; everything else as is."""
    return "" if value is None else value


def form_value(info: SettingInfo, value: Any) -> Any:
    """An empty text box means 'not set' for optional settings; numbers keep their type."""
    if isinstance(value, str) and not value.strip() and type(None) in getattr(info.type, "__args__", ()):
        return None
    return value


def _is_int(info: SettingInfo) -> bool:
    return base_type(info.type) is int


def control_for(info: SettingInfo, **overrides: Any) -> gr.components.Component:
    """The one control that suits a setting's type and spec; label, default and help come from the spec."""
    spec = info.spec
    common: dict[str, Any] = {"label": info.label, "info": spec.help, "value": display_value(info.default)}
    common.update(overrides)
    base = base_type(info.type)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), **common)
    if base is bool:
        return gr.Checkbox(**common)
    if base in (int, float):
        return _number_control(info, common)
    return gr.Textbox(type="password" if spec.secret else "text", **common)


def _number_control(info: SettingInfo, common: dict[str, Any]) -> gr.components.Component:
    spec = info.spec
    bounded = spec.minimum is not None and spec.maximum is not None and spec.step
    if bounded and (spec.maximum - spec.minimum) / spec.step <= MAX_SLIDER_POSITIONS:
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=spec.step, **common)
    extra: dict[str, Any] = {"minimum": spec.minimum, "maximum": spec.maximum}
    if _is_int(info):
        extra["precision"] = 0
        extra["step"] = spec.step or 1
    else:
        extra["step"] = spec.step or _float_step(info.default)
    return gr.Number(**extra, **common)


def _float_step(default: Any) -> float:
    """A step that does not reject the default (browsers refuse values off the step grid)."""
    if isinstance(default, float) and default:
        return abs(default) / 10
    return 0.01


def build_settings_form(
    cls: type[Settings],
    *,
    skip: tuple[str, ...] = (),
    custom: dict[str, Callable[[SettingInfo], gr.components.Component]] | None = None,
    advanced_label: str = "Advanced",
    prefix: str = "setting",
) -> SettingsForm:
    """Render every setting of ``cls``: common ones here, ``spec.advanced`` ones in an accordion.

    ``custom`` maps a setting name to a factory for settings that need a special control (the
    model picker); it still receives the SettingInfo so label, default and help come from the engine.
    """
    custom = custom or {}
    infos = [i for i in describe(cls) if i.name not in skip]
    form = SettingsForm(cls=cls, infos=infos)

    def make(info: SettingInfo) -> gr.components.Component:
        if info.name in custom:
            return custom[info.name](info)
        return control_for(info, elem_id=f"{prefix}-{info.name}")  # stable hooks for browser tests

    common = [i for i in infos if not i.spec.advanced]
    half = (len(common) + 1) // 2
    with gr.Row(equal_height=False):  # two columns keep the page short; order reads down the left first
        for column in (common[:half], common[half:]):
            with gr.Column():
                for info in column:
                    form.controls[info.name] = make(info)
    advanced = [i for i in infos if i.spec.advanced]
    if advanced:
        with gr.Accordion(advanced_label, open=False, elem_id=f"{prefix}-advanced"):
            for info in advanced:
                form.controls[info.name] = make(info)
    # Controls are created in two groups; keep the declaration order for values().
    form.controls = {i.name: form.controls[i.name] for i in infos}
    return form


# ----------------------------------------------------------------------------------------- models


def tokenizer_for(model_id: str, token: str | None = None) -> Any:
    """The tokenizer of a base model from the shared model cache (loading one takes a second or more)."""
    from services.model_cache import shared_models

    try:
        return shared_models().tokenizer(model_id, token or None)
    except OSError as exc:
        raise ModelError(
            f"The tokenizer of '{model_id}' could not be loaded ({str(exc).splitlines()[0]}). Check the "
            "model id and your connection, or choose the bundled model in the Train tab (works offline)."
        ) from exc


def model_token(owner: str, typed: str | None) -> str | None:
    """The token a request of ``owner`` loads a base model with: the visitor's own, else the server's where
    ``engine.workspace.token_for_job`` allows it (the Space owner's requests). Never another visitor's."""
    from engine.workspace import token_for_job

    return token_for_job(AccessPolicy.from_env(), owner, typed)


def chat_model_for(model_id: str, token: str | None = None) -> Any:
    """The shared ChatModel of a base model (adapters of every run share its weights), access-checked."""
    from services.model_cache import shared_models

    return shared_models().chat_model(model_id, token or None)


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``1 min 15 s``: how people read durations."""
    if seconds is None:
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


PHASE_WORDS = {
    "download": "Downloading", "load": "Loading the model", "convert": "Converting the model (first time only)",
    "tokenize": "Preparing the data", "train": "Training", "evaluate": "Evaluating", "save": "Saving",
    "read": "Reading", "ocr": "Reading scanned pages", "split": "Cutting into chunks", "embed": "Embedding",
    "index": "Writing the index", "generate": "Generating", "judge": "Judging",
}


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        for scale, name in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "kB")):
            if value >= scale:
                return f"{value / scale:.1f} {name}"
        return f"{value:.0f} B"
    return f"{value:,.0f}"


def progress_line(event: Any) -> str:
    """One line for an ``engine.events.Progress`` event, the same in every tab:
    "Embedding handbook.pdf: 1,200 of 4,000 chunks (page 3 of 12) · 85 chunks/s · 33 s left"."""
    words = PHASE_WORDS.get(event.phase, event.phase.capitalize() or "Working")
    text = f"{words} {event.item}".rstrip() if event.item else words
    unit = "" if event.unit == "bytes" else f" {event.unit}"
    if event.total:
        text += f": {_amount(event.done, event.unit)} of {_amount(event.total, event.unit)}{unit}"
    elif event.done:
        text += f": {_amount(event.done, event.unit)}{unit}"
    if event.pages:
        text += f" (page {event.page or 0} of {event.pages})"
    if event.rate:
        rate_unit = "/s" if event.unit == "bytes" else f" {event.unit or 'items'}/s"
        text += f" · {_amount(event.rate, event.unit)}{rate_unit}"
    if event.eta_seconds is not None:
        text += f" · {format_duration(event.eta_seconds)} left"
    if event.message:
        text += f" — {event.message}"
    return text


#: The parameters Gradio fills in itself for ``named_parameters(..., request=True)``, in signature order:
#: the request, and the "Sign in with Hugging Face" profile (None when signed out). Neither is an API parameter.
VISITOR_PARAMETERS: dict[str, Any] = {"request": gr.Request, "profile": gr.OAuthProfile | None}


def named_parameters(fn: Callable[..., Any], names: list[str], *, request: bool = False) -> Callable[..., Any]:
    """Give a ``*values`` handler one named parameter per input, so API clients see setting names.

    Gradio names API parameters from the handler's signature; generated forms otherwise show up
    as ``param_3``, ``param_4``... With this, ``client.predict(max_steps=4, api_name="/train_start")``
    works. ``request`` appends the :data:`VISITOR_PARAMETERS` (``request``, ``profile``), which Gradio fills
    in itself and ``fn`` receives by keyword.
    """
    extra = VISITOR_PARAMETERS if request else {}

    def split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Gradio passes request and profile positionally, where the signature puts them; hand them on by keyword."""
        if extra and len(args) > len(names) and "request" not in kwargs:
            return args[: len(names)], {**kwargs, **dict(zip(extra, args[len(names):], strict=False))}
        return args, kwargs

    if inspect.isasyncgenfunction(fn):  # job followers: Gradio must still see an async generator
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = split(args, kwargs)
            async for item in fn(*args, **kwargs):
                yield item
    elif inspect.isgeneratorfunction(fn):
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = split(args, kwargs)
            yield from fn(*args, **kwargs)
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = split(args, kwargs)
            return fn(*args, **kwargs)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, kind) for name in names]
    params += [inspect.Parameter(name, kind, annotation=hint) for name, hint in extra.items()]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = dict(extra)
    wrapper.__name__ = getattr(fn, "__name__", "handler")
    wrapper.__doc__ = fn.__doc__
    return wrapper


# ----------------------------------------------------------------------------------------- text


_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def literal_markdown(text: str) -> str:
    """``text`` shown exactly as written inside Markdown: no image, link, HTML tag, heading or emphasis.

    Why: document excerpts are written by whoever wrote the document; ``![x](http://evil/p.png)`` in a
    PDF must not load an image in a visitor's browser. CommonMark lets any ASCII punctuation be
    backslash-escaped, so escaping all of it leaves nothing for the renderer to interpret (``<`` too,
    and ``http\\://`` is not auto-linked), while the text still reads the same on screen.
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")  # "Title" over "=====": a heading too (setext)
_NOT_PARAGRAPH = re.compile(r"^\s*([-*+>|]|\d+[.)])")  # a list item, quote or table row is not underlined


def body_size(text: str) -> str:
    """A model's Markdown answer at body size: its headings (``# ReAct``) become bold lines, code stays as is.

    Why: a small model often starts an answer with a heading, which Markdown renders larger than the
    page's own titles; the answer is body text next to other answers, so it is shown as such.
    """
    lines: list[str] = []
    in_code = False
    for line in (text or "").split("\n"):
        if _FENCE.match(line):
            in_code = not in_code
        if (not in_code and _UNDERLINE.match(line) and lines and lines[-1].strip()
                and not _NOT_PARAGRAPH.match(lines[-1])):
            lines[-1] = f"**{lines[-1].strip()}**"
            continue
        heading = None if in_code else _HEADING.match(line)
        lines.append(f"**{heading.group(1)}**" if heading else line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- limits


def limits_markdown() -> str:
    """The server's limits as a two-column table, from ``engine.limits`` (no number is typed in the UI)."""
    rows = "\n".join(f"| {label} | {value} |" for label, value in limits().summary())
    return f"| Limit | Value |\n|---|---|\n{rows}"


def limit_label(name: str) -> str:
    """A limit's label as the panel shows it ("Ask before builds longer than (s)"), for messages that name it."""
    from engine.limits import Limits

    return next(info.label for info in describe(Limits) if info.name == name)


def limits_panel(elem_id: str) -> gr.Accordion:
    """A small closed "Limits on this server" accordion for a tab (Data, RAG)."""
    with gr.Accordion("Limits on this server", open=False, elem_id=elem_id) as panel:
        gr.Markdown(limits_markdown(), elem_id=f"{elem_id}-table")
    return panel


def check_message(text: str | None, request: gr.Request | None = None, what: str = "your message",
                  profile: gr.OAuthProfile | None = None) -> None:
    """Refuse a chat message or question longer than ``max_message_chars`` (the message names the limit)."""
    _check_length("max_message_chars", len(text or ""), f"The length of {what} (characters)",
                  "Shorten it, or split it into several messages.", visitor_of(request, profile))


def check_history(chars: int, request: gr.Request | None = None, profile: gr.OAuthProfile | None = None) -> None:
    """Refuse a conversation history longer than ``max_history_chars`` sent with a message."""
    _check_length("max_history_chars", chars, "The length of the conversation sent with your message (characters)",
                  "Press Clear to start a new conversation (the model only reads the latest turns anyway).",
                  visitor_of(request, profile))


def _check_length(name: str, value: int, what: str, fix: str, visitor: str) -> None:
    try:
        limits().check(name, value, what, fix)
    except LimitError:
        log.info("Refused %s of %d characters from %s", name, value, visitor)  # who sends oversize
        raise


# ----------------------------------------------------------------------------------------- demo guard

READ_ONLY = "read-only"
WRITES = "writes"
OWNER_FILES = "downloads owner files"

#: What each API endpoint does to the workspace it works in, by ``api_name``: (kind, action for messages).
#: In the read-only demo that workspace is the Space owner's, so every endpoint that is not READ_ONLY is
#: refused there (:func:`endpoint` registers every public event with that check in front). An endpoint
#: missing from this table cannot be registered at all, so the app fails to build (fail closed), and
#: ``tests/test_demo_readonly.py`` checks the running app's API against it: a new endpoint is declared here.
ENDPOINT_ACCESS: dict[str, tuple[str, str]] = {
    # Data
    "data_upload": (WRITES, "Uploading a dataset"),
    "data_load_demo": (READ_ONLY, ""),
    "data_apply_mapping": (READ_ONLY, ""),
    "data_check": (READ_ONLY, ""),
    "data_preview": (READ_ONLY, ""),
    # Train
    "train_apply_preset": (READ_ONLY, ""),
    "train_estimate_memory": (READ_ONLY, ""),
    "train_start": (WRITES, "Training"),
    "train_stop": (WRITES, "Stopping a run"),
    "train_resume": (WRITES, "Resuming a run"),
    "train_provide_token": (WRITES, "Giving a waiting run its token"),
    "train_show_run": (READ_ONLY, ""),
    "train_refresh": (READ_ONLY, ""),
    "train_status": (READ_ONLY, ""),
    "train_try": (READ_ONLY, ""),  # answers like Chat does with the same runs
    "train_download_adapter": (OWNER_FILES, "Downloading an adapter"),
    "train_download_merged": (OWNER_FILES, "Building and downloading a merged model"),
    # RAG
    "rag_open": (WRITES, "Opening or creating a collection"),
    "rag_apply_pipeline": (WRITES, "Changing a collection's pipeline"),
    "rag_reindex": (WRITES, "Re-indexing"),
    "rag_preview": (READ_ONLY, ""),
    "rag_build": (WRITES, "Building an index"),
    "rag_remove": (WRITES, "Removing files"),
    "rag_cancel": (WRITES, "Cancelling an index job"),
    "rag_import_pipeline": (READ_ONLY, ""),
    "rag_search": (READ_ONLY, ""),
    "rag_ask": (READ_ONLY, ""),
    "rag_show_page": (READ_ONLY, ""),
    "rag_page_image": (READ_ONLY, ""),  # the page rag_show_page shows as text, as the RAG tab shows it
    # Compare
    "compare_refresh": (READ_ONLY, ""),
    "compare_ask": (READ_ONLY, ""),
    "compare_run": (READ_ONLY, ""),
    "compare_blind_start": (READ_ONLY, ""),
    "compare_vote_a": (READ_ONLY, ""),
    "compare_vote_b": (READ_ONLY, ""),
    "compare_vote_tie": (READ_ONLY, ""),
    "compare_vote_both_bad": (READ_ONLY, ""),
    "compare_export": (READ_ONLY, ""),  # in the demo the report goes to the download folder only
    "compare_improve": (WRITES, "Training on your votes"),  # writes the pairs file and starts a DPO run
    # Chat
    "chat": (READ_ONLY, ""),
    "chat_refresh": (READ_ONLY, ""),
    "chat_clear": (READ_ONLY, ""),
    # Share
    "share_refresh": (READ_ONLY, ""),
    "share_model_card": (READ_ONLY, ""),
    "share_build_demo": (OWNER_FILES, "Building a demo Space"),
    "share_push_model": (WRITES, "Publishing"),
    "share_push_demo": (WRITES, "Publishing"),
    # Lab (computes on models and reads the visitor's own runs and reports; writes nothing)
    "lab_quantize": (READ_ONLY, ""),
    "lab_analyse": (READ_ONLY, ""),
    "lab_sample_weights": (READ_ONLY, ""),
    "lab_precision": (READ_ONLY, ""),
    "lab_lora": (READ_ONLY, ""),
    "lab_refresh": (READ_ONLY, ""),
    "lab_spectrum": (READ_ONLY, ""),
    "lab_memory": (READ_ONLY, ""),
    "lab_decide": (READ_ONLY, ""),
    # Experiment
    "experiment_open": (WRITES, "Creating an experiment"),
    "experiment_generate": (WRITES, "Generating questions"),
    "experiment_cancel": (WRITES, "Cancelling an experiment step"),
    "experiment_save_questions": (WRITES, "Editing questions"),
    "experiment_import": (WRITES, "Importing questions"),
    "experiment_split": (WRITES, "Splitting questions"),
    "experiment_run": (WRITES, "Running an experiment"),
    "experiment_status": (READ_ONLY, ""),
    "experiment_vote_a": (WRITES, "Voting"),
    "experiment_vote_b": (WRITES, "Voting"),
    "experiment_vote_tie": (WRITES, "Voting"),
    "experiment_vote_both_bad": (WRITES, "Voting"),
    "experiment_download": (READ_ONLY, ""),  # the questions go to the download folder only
}


def refuse_in_demo(kind: str, action: str) -> None:
    """The one demo check: in the read-only demo, refuse what writes or hands out the owner's files."""
    if kind == READ_ONLY:
        return
    try:
        AccessPolicy.from_env().require_write(action or "This action")
    except AccessError as exc:
        raise gr.Error(str(exc), title="Read-only demo", duration=ERROR_TOAST_S) from exc


class UndeclaredEndpointError(LookupError):
    """A public ``api_name`` missing from :data:`ENDPOINT_ACCESS`: the app refuses to build with it."""


def declared_access(api_name: str) -> tuple[str, str]:
    """``(kind, action)`` of a public endpoint from :data:`ENDPOINT_ACCESS`; an undeclared one fails the build.

    Why fail at build time: an endpoint nobody classified could write to the demo owner's workspace, so
    the app does not start with one (``tests/test_demo_readonly.py`` checks the running app the same way).
    """
    try:
        return ENDPOINT_ACCESS[api_name]
    except KeyError:
        raise UndeclaredEndpointError(
            f"API endpoint {api_name!r} is not declared in ui.common.ENDPOINT_ACCESS: add it there as READ_ONLY, "
            "WRITES or OWNER_FILES, so the read-only demo knows whether to refuse it.") from None


def demo_guarded(fn: Callable[..., Any], api_name: str) -> Callable[..., Any]:
    """``fn`` itself when ``api_name`` only reads, else ``fn`` with :func:`refuse_in_demo` in front.

    The check runs inside the very function the API calls (not in a ``validator=``, which Gradio runs as a
    separate call before it), and reads the policy at call time, like every other access check.
    """
    kind, action = declared_access(api_name)
    if kind == READ_ONLY:
        return fn
    return wrap_calls(fn, before=functools.partial(refuse_in_demo, kind, action))


def endpoint(triggers: Any, fn: Callable[..., Any], inputs: Any = None, outputs: Any = None, *, api_name: str,
             **kwargs: Any) -> gr.events.Dependency:
    """Register one public API event with Gradio's ``gr.on``, guarded for the read-only demo.

    Every event in ui/ with a public ``api_name`` is registered through here (``api_endpoint`` for ``gr.api``),
    so its access is declared before it exists: see :func:`declared_access` and :func:`demo_guarded`.
    ``triggers`` is one event listener (``button.click``) or a list; ``kwargs`` go to ``gr.on`` unchanged.
    """
    return gr.on(triggers, demo_guarded(fn, api_name), inputs, outputs, api_name=api_name, **kwargs)


def api_endpoint(fn: Callable[..., Any], *, api_name: str, **kwargs: Any) -> gr.events.Dependency:
    """An API-only function (``gr.api``), declared and guarded like :func:`endpoint`."""
    return gr.api(demo_guarded(fn, api_name), api_name=api_name, **kwargs)
