"""Declared options, the one mechanism of kernels' and blocks' settings.

A kernel's or a block's options are its constructor's keyword arguments after the leading ones (a kernel's channels
and state size, a block's config), and their defaults are written there only: `option_defaults()` reads them from
the signature, once per class. `OPTIONS` declares what each may be: a tuple of choices or a type (its keys are the
signature's options; a test holds them equal, and docs/kernels.md's tables to both). `validate_options` checks a
config's options against both and then the class's own `check_options`, which sees every option, the defaults
filled in. A default of None is one filled elsewhere (from the config or the state size, which the class's
docstring names), so None is accepted where the default is None.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import ClassVar


class DeclaredOptions:
    OPTIONS: ClassVar[dict[str, tuple | type]] = {}
    # How many constructor arguments (after self) come before the options.
    LEADING_ARGUMENTS: ClassVar[int] = 0

    @classmethod
    @functools.cache
    def option_defaults(cls) -> dict[str, object]:
        """{option: default} from `__init__`'s keyword arguments after the leading ones, in their order. A
        `**kwargs` there passes options on to the parent class, whose own are added (a default the subclass declares
        again is the subclass's)."""
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1 + cls.LEADING_ARGUMENTS:]
        defaults = {p.name: p.default for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            parent = next(base for base in cls.__mro__[1:]
                          if issubclass(base, DeclaredOptions) and "__init__" in vars(base))
            defaults = {**parent.option_defaults(), **defaults}
        return defaults

    @classmethod
    def with_defaults(cls, options: dict) -> dict:
        """`options` with every option it leaves out at its default: what `check_options` is given."""
        return {**cls.option_defaults(), **options}

    @classmethod
    def validate_options(cls, options: dict, field: str = "options", *context) -> None:
        """Raise ValueError naming `field.key` for an option the class does not take, or of the wrong type or value;
        then for values that cannot work together (`check_options`, given `context` too: a block's config)."""
        if not isinstance(options, dict):
            raise ValueError(f"{field} must be a mapping of option names to values, got {type(options).__name__}")
        for key, value in options.items():
            if key not in cls.OPTIONS:
                close = difflib.get_close_matches(str(key), cls.OPTIONS, n=1)
                raise ValueError(f"{field}.{key}: {cls.__name__} has no such option"
                                 f"{f' (did you mean {close[0]!r}?)' if close else ''}; it takes "
                                 f"{', '.join(cls.OPTIONS) or 'none'}")
            expected = cls.OPTIONS[key]
            if value is None and cls.option_defaults().get(key) is None:  # filled elsewhere; check_options says so
                continue
            if isinstance(expected, tuple):
                if value not in expected:
                    raise ValueError(f"{field}.{key} must be one of {', '.join(map(repr, expected))}, got {value!r}")
            elif (isinstance(value, bool) and expected is not bool) or not isinstance(
                    value, (int, float) if expected is float else expected):
                raise ValueError(f"{field}.{key} expected {expected.__name__}, got {type(value).__name__} {value!r}")
        try:
            cls.check_options(cls.with_defaults(options), *context)
        except ValueError as error:
            raise ValueError(f"{field}: {error}") from None

    @classmethod
    def check_options(cls, options: dict, *context) -> None:
        """Raise ValueError for option values that are of the right type but cannot work together. `options` holds
        every option, the defaults filled in (`with_defaults`)."""
