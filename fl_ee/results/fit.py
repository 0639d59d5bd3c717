"""Tables that fit the terminal: folded, split or stacked to its width, never cut.

rich shrinks a table that is too wide by narrowing its columns, and a cell whose word no
longer fits is cut with an ellipsis. The renderables here decide at render time, from
the width they are given: :class:`Sheet` tries the whole table, then the same table
split into parts (its key columns repeated in each) until every line fits and no word
was cut; :class:`Blocks` places small tables side by side on wide terminals and
stacks them below ``STACK_BELOW`` columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rich import box
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

STACK_BELOW = 100  # columns: below this, key/value blocks stand one under the other
ELLIPSIS = "…"  # what rich puts where it cut a cell

Justify = Literal["left", "center", "right"]
Overflow = Literal["fold", "ellipsis"]


def fits(console: Console, options: ConsoleOptions, renderable: RenderableType) -> bool:
    """Whether ``renderable`` renders within ``options.max_width`` with no cell cut short."""
    width = options.max_width
    for line in console.render_lines(renderable, options, pad=False):
        if Segment.get_line_length(line) > width or any(ELLIPSIS in s.text for s in line):
            return False
    return True


@dataclass(frozen=True)
class Col:
    """A column of a :class:`Sheet`."""

    header: str
    justify: Justify = "right"


@dataclass
class Sheet:
    """A table kept as data, rendered whole when it fits and split by columns when not.

    The first ``keys`` columns (the row labels) are repeated in every part; the other
    columns are spread over as few parts as fit, first along ``groups`` (lists of column
    indices that belong together) when given. ``None`` in ``rows`` starts a section.
    The ``extra`` columns are left out where the whole table does not fit, before it is
    split: the caption names them and ``extra_hint`` says how to see them.
    """

    title: str | None
    columns: Sequence[Col]
    rows: list[Sequence[RenderableType] | None] = field(default_factory=list)
    caption: str | None = None
    keys: int = 1
    groups: Sequence[Sequence[int]] = ()
    extra: Sequence[int] = ()
    extra_hint: str = ""

    def add_row(self, *cells: RenderableType) -> None:
        """Append a row (one cell per column)."""
        self.rows.append(cells)

    def add_section(self) -> None:
        """A rule before the next row."""
        self.rows.append(None)

    def table(self, columns: Sequence[int] | None = None, title: str | None = None,
              caption: str | None = None, overflow: Overflow = "ellipsis", compact: bool = False) -> Table:
        """A rich table of ``columns`` (indices; all by default).

        Cells that do not fit are cut with an ellipsis (so :func:`fits` sees it), or
        folded onto the next line with ``overflow="fold"``. ``compact`` tables have two
        spaces between columns instead of three, and none at the edges.
        """
        chosen = list(range(len(self.columns))) if columns is None else list(columns)
        spacing = {"padding": (0, 0, 0, 1), "show_edge": False, "pad_edge": False} if compact else {}
        table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, **spacing)  # type: ignore[arg-type]
        for i in chosen:
            table.add_column(self.columns[i].header, justify=self.columns[i].justify, overflow=overflow)
        for row in self.rows:
            if row is None:
                table.add_section()
            else:
                table.add_row(*(row[i] for i in chosen))
        return table

    def parts(self, count: int, overflow: Overflow = "ellipsis") -> Group:
        """The table split into ``count`` parts of about equal numbers of value columns."""
        values = list(range(self.keys, len(self.columns)))
        size = -(-len(values) // count)
        return self._tables([values[i:i + size] for i in range(0, len(values), size)], overflow)

    def _tables(self, chunks: Sequence[Sequence[int]], overflow: Overflow = "ellipsis") -> Group:
        """One table per chunk of value columns, under the title and above the caption."""
        keys = list(range(self.keys))
        title = [Text(self.title, style="table.title")] if self.title else []
        caption = [Text(self.caption, style="table.caption")] if self.caption else []
        return Group(*title, *(self.table([*keys, *chunk], overflow=overflow) for chunk in chunks), *caption)

    def without_extra(self) -> Sheet:
        """The table without its ``extra`` columns, its caption naming them."""
        kept = [i for i in range(len(self.columns)) if i not in self.extra]
        at = {old: new for new, old in enumerate(kept)}
        note = f"{', '.join(self.columns[i].header for i in self.extra)} left out at this width: {self.extra_hint}"
        return Sheet(self.title, [self.columns[i] for i in kept],
                     [None if row is None else [row[i] for i in kept] for row in self.rows],
                     caption=f"{self.caption}; {note}" if self.caption else note, keys=self.keys,
                     groups=[g for g in ([at[i] for i in group if i in at] for group in self.groups) if g])

    def layouts(self) -> Iterable[RenderableType]:
        """The whole table (then more tightly spaced); then without its extra columns, or split.

        Split in its groups, then in 2, 3, ... parts.
        """
        yield self.table(title=self.title, caption=self.caption)
        yield self.table(title=self.title, caption=self.caption, compact=True)
        if self.extra:
            yield from self.without_extra().layouts()
            return
        if self.groups:
            yield self._tables(self.groups)
        for count in range(2, len(self.columns) - self.keys + 1):
            yield self.parts(count)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The first layout that fits the width uncut; else one value column a part, long words folded."""
        for layout in self.layouts():
            if fits(console, options, layout):
                yield layout
                return
        narrowest = self.without_extra() if self.extra else self
        yield narrowest.parts(max(1, len(narrowest.columns) - narrowest.keys), overflow="fold")


@dataclass
class Blocks:
    """Small tables side by side on a wide terminal, one under the other below :data:`STACK_BELOW` columns."""

    blocks: Sequence[RenderableType]
    padding: int = 4

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Side by side where that fits, else stacked."""
        if options.max_width >= STACK_BELOW:
            beside = Columns(self.blocks, padding=(0, self.padding))
            if fits(console, options, beside):
                yield beside
                return
        yield Group(*self.blocks)
