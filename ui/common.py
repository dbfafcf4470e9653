"""Pieces every tab shares: forms generated from settings, friendly errors, model caches.

Why here: the forms must come from the engine's setting definitions (``describe``), never be
retyped per tab, and every user-facing failure must reach the browser as one clear sentence
while the app stays up. Caches of tokenizers and chat models are process-wide on purpose: they
hold read-only models, not a visitor's state.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from engine.data.errors import DatasetError
from engine.jobs import JobError
from engine.models import ModelError
from engine.settings import SettingInfo, Settings, SettingsError, base_type, describe
from engine.workspace import AccessError, AccessPolicy, Workspace

log = logging.getLogger("tune_studio.ui")

# A slider only when its range has few enough positions to be usable with a mouse.
MAX_SLIDER_POSITIONS = 2000

#: Exceptions whose message is already written for the user (engine convention).
USER_ERRORS: tuple[type[BaseException], ...] = (
    SettingsError, DatasetError, JobError, ModelError, AccessError, FileNotFoundError, ValueError,
)


# ----------------------------------------------------------------------------------------- errors


def user_error(exc: BaseException, title: str = "That did not work") -> gr.Error:
    """A gr.Error that stays on screen until closed: the browser shows it, API clients receive it."""
    if isinstance(exc, USER_ERRORS):
        message = str(exc)
    else:
        log.exception("Unexpected error in a UI handler")
        message = (f"Something unexpected went wrong ({type(exc).__name__}: {exc}). "
                   "The app is still running and nothing you had is lost; try again, or check the server log.")
    # The toast renders HTML, so "<image>" must be escaped; quotes need not be (API clients read them as typed).
    return gr.Error(html.escape(message, quote=False), duration=None, title=title)


def friendly_errors(title: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn any exception of a handler into a titled gr.Error, so no click ever shows a raw trace.

    Works for plain functions and generators (streaming answers). A ``gr.Error`` raised on purpose
    passes through unchanged.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                try:
                    yield from fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as exc:
                    raise user_error(exc, title) from exc
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise user_error(exc, title) from exc
        return wrapper

    return wrap


def signed_in_user(request: gr.Request | None) -> str | None:
    """The visitor's user name: password sign-in (``request.username``) or "Sign in with Hugging Face"."""
    if request is None:
        return None
    username = getattr(request, "username", None)
    if username:
        return str(username)
    try:
        session = request.session  # only present when OAuth's session middleware is installed
    except (AssertionError, AttributeError, KeyError):
        return None
    info = (session or {}).get("oauth_info") or {}
    if info.get("expires_at") and float(info["expires_at"]) < time.time():
        return None
    return (info.get("userinfo") or {}).get("preferred_username")


def owner_of(request: gr.Request | None) -> str:
    """Whose workspace a request works in: the signed-in user, the demo's workspace, or one local owner.

    A shared local owner (no sign-in configured) is what lets a second browser or a refreshed page see
    the running job. With sign-in configured, an anonymous request is refused with a clear message.
    """
    try:
        return AccessPolicy.from_env().owner_for(signed_in_user(request))
    except AccessError as exc:
        raise gr.Error(str(exc), title="Please sign in") from exc


def workspace_of(request: gr.Request | None) -> Workspace:
    """The visitor's workspace: every handler that reads or writes user data goes through this."""
    return Workspace(owner_of(request))


def served_copy(path: str | Path) -> str:
    """Hand a file to the browser as a copy in a fresh temporary folder.

    Why: the data directory is not served (``allowed_paths`` does not include it), so one visitor can
    never fetch another's files by guessing a path; Gradio serves only the files the app hands out.
    """
    source = Path(path)
    target = Path(tempfile.mkdtemp(prefix="tune-studio-download-")) / source.name
    shutil.copy2(source, target)
    return str(target)


def require_write(action: str) -> None:
    """Refuse training/indexing in the read-only demo with a message that says why."""
    try:
        AccessPolicy.from_env().require_write(action)
    except AccessError as exc:
        raise gr.Error(str(exc), title="Read-only demo") from exc

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


# ----------------------------------------------------------------------------------------- caches

_cache_lock = threading.Lock()
_tokenizers: dict[str, Any] = {}
_chat_models: dict[str, Any] = {}


def tokenizer_for(model_id: str, token: str | None = None) -> Any:
    """One tokenizer per base model for the whole server (loading one takes a second or more)."""
    from engine.models import load_tokenizer

    with _cache_lock:
        if model_id not in _tokenizers:
            try:
                _tokenizers[model_id] = load_tokenizer(model_id, token or None)
            except OSError as exc:
                raise ModelError(
                    f"The tokenizer of '{model_id}' could not be loaded ({str(exc).splitlines()[0]}). Check the "
                    "model id and your connection, or choose the bundled model in the Train tab (works offline)."
                ) from exc
        return _tokenizers[model_id]


def chat_model_for(model_id: str, token: str | None = None) -> Any:
    """One ChatModel per base model: adapters of every run share its weights."""
    from engine.infer import ChatModel

    with _cache_lock:
        if model_id not in _chat_models:
            _chat_models[model_id] = ChatModel(model_id, token=token or None)
        return _chat_models[model_id]


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


def named_parameters(fn: Callable[..., Any], names: list[str], *, request: bool = False) -> Callable[..., Any]:
    """Give a ``*values`` handler one named parameter per input, so API clients see setting names.

    Gradio names API parameters from the handler's signature; generated forms otherwise show up
    as ``param_3``, ``param_4``... With this, ``client.predict(max_steps=4, api_name="/train_start")``
    works. ``request`` appends a ``gr.Request`` parameter that Gradio fills in itself.
    """
    def split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Gradio passes the request positionally, where the signature puts it; hand it on by keyword."""
        if request and len(args) > len(names) and "request" not in kwargs:
            return args[: len(names)], {**kwargs, "request": args[len(names)]}
        return args, kwargs

    if inspect.isgeneratorfunction(fn):
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = split(args, kwargs)
            yield from fn(*args, **kwargs)
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = split(args, kwargs)
            return fn(*args, **kwargs)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, kind) for name in names]
    annotations: dict[str, Any] = {}
    if request:
        params.append(inspect.Parameter("request", kind, annotation=gr.Request))
        annotations["request"] = gr.Request
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = annotations
    wrapper.__name__ = getattr(fn, "__name__", "handler")
    wrapper.__doc__ = fn.__doc__
    return wrapper
