"""Config fields and the checks of their values, for every config dataclass (:mod:`detlab.config`, the model
families' sections, :mod:`detlab.classify.config`).

    batch_size: int = setting(8, check=at_least(1))

A check is ``check(value) -> None or what is wrong``, the text following ``key = value`` in the error (``must be
at least 1``). ``None`` passes every check made here: a null setting has the meaning its field documents. This
module imports nothing of detlab, so a family's section (which :mod:`detlab.config` imports) declares its fields
as the other sections do.
"""

import dataclasses
from collections.abc import Callable

Check = Callable[[object], str | None]


def setting(default=dataclasses.MISSING, *, choices=None, check: Check | None = None, help: str | None = None,
            default_factory=dataclasses.MISSING):
    """A dataclass field with what loading checks: ``choices`` (a dict's keys or a tuple, e.g. ``MODELS``), and
    ``check(value) -> problem or None`` for the rest; ``help`` documents it for command lines."""
    metadata = {key: value for key, value in (("choices", choices), ("check", check), ("help", help))
                if value is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def choice(default, choices):
    """A dataclass field whose value must be one of ``choices``, checked on load."""
    return setting(default, choices=choices)


def _note(meaning: str | None) -> str:
    return f" ({meaning})" if meaning else ""


def at_least(minimum, meaning: str | None = None) -> Check:
    """A number >= ``minimum``; ``meaning`` explains an edge value (``"0: load in the training process"``)."""
    return lambda value: None if value is None or value >= minimum else f"must be at least {minimum}{_note(meaning)}"


def above(bound, meaning: str | None = None) -> Check:
    """A number > ``bound``."""
    return lambda value: None if value is None or value > bound else f"must be greater than {bound}{_note(meaning)}"


def within(low, high, *, high_included: bool = True) -> Check:
    """A number in ``[low, high]`` (``[low, high)`` without ``high_included``)."""
    def check(value):
        inside = value is None or (low <= value and (value <= high if high_included else value < high))
        return None if inside else f"must lie in [{low}, {high}{']' if high_included else ')'}"
    return check


def multiple_of(step: int, meaning: str) -> Check:
    """A positive multiple of ``step``."""
    def check(value):
        fits = value is None or (value >= step and value % step == 0)
        return None if fits else f"must be a positive multiple of {step} ({meaning})"
    return check


def nonempty(value) -> str | None:
    """The check of a list that needs at least one entry."""
    return "must list at least one entry" if value is not None and len(value) == 0 else None


def entries(count: int | None = None, what: str = "", each: Check | None = None) -> Check:
    """A list of ``count`` entries (any number but none when ``count`` is None; ``what`` says what they are),
    each passing ``each``."""
    def check(value):
        if value is None:
            return None
        if count is not None and len(value) != count:
            return f"must list {count} entries{_note(what)}, not {len(value)}"
        if count is None and not value:
            return f"must list at least one entry{_note(what)}"
        problems = ((i, each(entry)) for i, entry in enumerate(value)) if each is not None else ()
        i, problem = next(((i, problem) for i, problem in problems if problem), (None, None))
        if problem is None:
            return None
        if problem.startswith("has entry ["):  # a list of lists: name the inner entry as [i][j]
            return f"has entry [{i}]{problem.removeprefix('has entry ')}"
        return f"has entry [{i}] = {value[i]!r}, which {problem}"
    return check
