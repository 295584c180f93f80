"""Click parameter types shared by several commands."""
import click

PREFETCH_HELP = ("Tasks taken beyond the concurrency, ready to start when a slot frees: a "
                 "number, or auto (the default: the worker sizes it from its tasks' durations).")


class Prefetch(click.ParamType):
    """A prefetch: 0 to 1024, or `auto` (returned as the string, for the caller to map)."""
    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor auto", param, ctx)
        if not 0 <= number <= 1024:
            self.fail(f"{number} is not between 0 and 1024", param, ctx)
        return number


PREFETCH = Prefetch()


def prefetch_value(value):
    """What the API takes: a number, or None for auto."""
    return None if value in (None, "auto") else value
