"""What the post-processing filters know about the cursor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CompletionContext:
    prefix: str          # document text before the cursor
    suffix: str          # document text after the cursor
    multiline: bool      # whether a multi-line completion was asked for

    @property
    def current_line(self) -> str:
        """The cursor's line up to the cursor."""
        return self.prefix[self.prefix.rfind("\n") + 1:]

    @property
    def rest_of_line(self) -> str:
        """The cursor's line after the cursor."""
        return self.suffix.split("\n", 1)[0]

    @property
    def on_blank_line(self) -> bool:
        """Whether the cursor's line holds nothing but blanks: the user asks for a line."""
        return not self.current_line.strip() and not self.rest_of_line.strip()

    @property
    def next_lines(self) -> list[str]:
        """The lines after the cursor's line."""
        return self.suffix.split("\n")[1:]

    @property
    def indent(self) -> int:
        """Indentation (columns) of the cursor's line, or of the block it opens."""
        line = self.current_line
        return len(line) - len(line.lstrip())
